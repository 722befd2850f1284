#!/usr/bin/env bash
# Create the "vcam" virtual camera on Linux (v4l2loopback), now and at every boot. Needs root (sudo).
#   exclusive_caps=1 is what Chrome, Zoom, Teams and Meet need to list the device as a camera.
set -euo pipefail
label="${VCAM_CAMERA_LABEL:-vcam}"
number="${VCAM_VIDEO_NR:-10}"
if [ "$(id -u)" != 0 ]; then exec sudo --preserve-env=VCAM_CAMERA_LABEL,VCAM_VIDEO_NR bash "$0" "$@"; fi
if ! modinfo v4l2loopback >/dev/null 2>&1; then
  if command -v apt-get >/dev/null; then
    apt-get install -y v4l2loopback-dkms "linux-headers-$(uname -r)" || apt-get install -y v4l2loopback-dkms
  elif command -v dnf >/dev/null; then dnf install -y v4l2loopback
  elif command -v pacman >/dev/null; then pacman -S --noconfirm v4l2loopback-dkms
  else echo "setup-v4l2loopback: install the v4l2loopback kernel module with your package manager, then run again" >&2; exit 1
  fi
fi
options="devices=1 video_nr=${number} exclusive_caps=1 card_label=${label}"
modprobe -r v4l2loopback 2>/dev/null || true
modprobe v4l2loopback ${options}
echo "v4l2loopback" > /etc/modules-load.d/vcam-v4l2loopback.conf
echo "options v4l2loopback ${options}" > /etc/modprobe.d/vcam-v4l2loopback.conf
echo "vcam: virtual camera '${label}' is /dev/video${number} (and will be after every boot)"
