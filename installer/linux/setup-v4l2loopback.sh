#!/usr/bin/env bash
# Create the "vcam" virtual camera on Linux (the v4l2loopback kernel module), now and at every boot.
#   bash installer/linux/setup-v4l2loopback.sh           explain, ask, then install/load/persist (uses sudo)
#   bash installer/linux/setup-v4l2loopback.sh --check   only report what is there; changes nothing (exit 1: missing)
#   bash installer/linux/setup-v4l2loopback.sh --dry-run print the commands and files it would write; changes nothing
#   --yes                                                do not ask (for scripts)
# VCAM_CAMERA_LABEL (default vcam) and VCAM_VIDEO_NR (default 10) choose the device's name and /dev/videoN.
# exclusive_caps=1 is what Chrome, Zoom, Teams and Meet need to list the device as a camera.
set -euo pipefail
label="${VCAM_CAMERA_LABEL:-vcam}"
number="${VCAM_VIDEO_NR:-10}"
mode=apply
assume_yes=0
for arg in "$@"; do
  case "$arg" in
    --check) mode=check ;;
    --dry-run) mode=dry-run ;;
    --yes|-y) assume_yes=1 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "setup-v4l2loopback: unknown option $arg (known: --check, --dry-run, --yes)" >&2; exit 2 ;;
  esac
done
options="devices=1 video_nr=${number} exclusive_caps=1 card_label=${label}"
load_conf=/etc/modules-load.d/vcam-v4l2loopback.conf
options_conf=/etc/modprobe.d/vcam-v4l2loopback.conf

installed() { modinfo v4l2loopback >/dev/null 2>&1; }
loaded() { [ -d /sys/module/v4l2loopback ]; }

if [ "$mode" = check ]; then
  status=0
  if installed; then echo "OK   module     v4l2loopback is installed"; else echo "FAIL module     v4l2loopback is not installed -> run this script without --check"; status=1; fi
  if loaded; then echo "OK   loaded     v4l2loopback is loaded"; else echo "FAIL loaded     v4l2loopback is not loaded -> run this script without --check"; status=1; fi
  devices=""
  for name in /sys/devices/virtual/video4linux/video*/name; do
    [ -e "$name" ] || continue
    devices="$devices /dev/$(basename "$(dirname "$name")") ($(cat "$name"))"
  done
  if [ -n "$devices" ]; then echo "OK   devices    $devices"; else echo "FAIL devices    no loopback device -> run this script without --check"; status=1; fi
  if [ -f "$load_conf" ] && [ -f "$options_conf" ]; then echo "OK   at boot    $load_conf, $options_conf"
  else echo "WARN at boot    not set to load at boot -> run this script without --check"; fi
  exit "$status"
fi

install_cmd=""
if ! installed; then
  if command -v apt-get >/dev/null; then install_cmd="apt-get install -y v4l2loopback-dkms linux-headers-$(uname -r)"
  elif command -v dnf >/dev/null; then install_cmd="dnf install -y v4l2loopback"
  elif command -v pacman >/dev/null; then install_cmd="pacman -S --noconfirm v4l2loopback-dkms"
  else echo "setup-v4l2loopback: install the v4l2loopback kernel module with your package manager, then run again" >&2; exit 1
  fi
fi
plan=()
[ -z "$install_cmd" ] || plan+=("$install_cmd")
plan+=("modprobe -r v4l2loopback" "modprobe v4l2loopback $options")
echo "This sets up the virtual camera '$label' as /dev/video$number:"
for step in "${plan[@]}"; do echo "  $step"; done
echo "  write $load_conf:    v4l2loopback"
echo "  write $options_conf:    options v4l2loopback $options"
if [ "$mode" = dry-run ]; then exit 0; fi

sudo=()
if [ "$(id -u)" != 0 ]; then
  sudo=(sudo)
  echo "These steps need root: sudo will ask for your password."
fi
if [ "$assume_yes" = 0 ]; then
  read -r -p "Go ahead? [y/N] " answer
  case "$answer" in y|Y|yes|YES) ;; *) echo "setup-v4l2loopback: nothing changed"; exit 1 ;; esac
fi
if [ -n "$install_cmd" ]; then
  # shellcheck disable=SC2086  # the command is words on purpose
  "${sudo[@]}" $install_cmd || { [ "${install_cmd%% *}" = apt-get ] && "${sudo[@]}" apt-get install -y v4l2loopback-dkms; }
fi
"${sudo[@]}" modprobe -r v4l2loopback 2>/dev/null || true
# shellcheck disable=SC2086
"${sudo[@]}" modprobe v4l2loopback $options
echo "v4l2loopback" | "${sudo[@]}" tee "$load_conf" >/dev/null
echo "options v4l2loopback $options" | "${sudo[@]}" tee "$options_conf" >/dev/null
echo "vcam: virtual camera '$label' is /dev/video$number (and will be after every boot)"
