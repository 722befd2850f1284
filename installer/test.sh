#!/usr/bin/env bash
# Run the test suite. The tests use real components: OBS Studio under Xvfb, pynput hotkeys driven by xdotool, the Qt
# tray under Xvfb with a tray host, OpenCV on real video files. On Debian/Ubuntu (as root, or with sudo) this installs
# the ones that are missing, then runs pytest in the project's virtual environment.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VCAM_VENV:-$here/.venv}"
"$here/installer/linux/test-deps.sh"
cd "$here"
# Two workers (pytest-xdist): many specs wait on a real process, a display or a socket, so two at a time keep both
# cores busy; VCAM_TEST_WORKERS=0 runs them in this one process.
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider -n "${VCAM_TEST_WORKERS:-2}" --dist worksteal "$@"
