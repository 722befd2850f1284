#!/usr/bin/env bash
# System packages the test suite drives for real (Debian/Ubuntu; systemd for `systemd-analyze verify` of the
# service unit). Installs only what is missing.
set -euo pipefail
packages=(xvfb xauth xdotool x11-utils obs-studio ffmpeg trayer systemd
  libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 libxcb-image0
  libxcb-render-util0 libxcb-xinerama0 libegl1 libgl1 libdbus-1-3 libfontconfig1)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
command -v apt-get >/dev/null || { echo "test-deps: install these with your package manager: ${missing[*]}" >&2; exit 1; }
sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
