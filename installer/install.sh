#!/usr/bin/env bash
# Install vcam into ./.venv with the right PyTorch build for this machine, then (with --demo) run the offline demo.
#
# Why a script and not a bare `pip install`: a plain `torch` requirement pulls a multi-GB CUDA build even on machines
# without an NVIDIA GPU. We pick the build first (CUDA where nvidia-smi answers, the default wheel on macOS for MPS,
# the CPU wheel elsewhere) and only then install the project, whose `torch>=2.1` range is then already satisfied.
#   VCAM_TORCH="torch==2.13.0"      pip requirement to use instead of the automatic choice
#   VCAM_TORCH_INDEX=URL            extra pip index for it (e.g. PyTorch's CPU or a specific CUDA index)
#   VCAM_VENV=path                  where to create the virtual environment (default: .venv beside this repo)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VCAM_VENV:-$here/.venv}"
demo=0
for arg in "$@"; do
  case "$arg" in
    --demo) demo=1 ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (known: --demo)" >&2; exit 2 ;;
  esac
done

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
  echo "install.sh: vcam needs Python 3.10 or newer; install it and run again (or set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip >/dev/null

if "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "vcam: keeping the installed torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
else
  spec="${VCAM_TORCH:-}"
  index=()
  [ -z "${VCAM_TORCH_INDEX:-}" ] || index=(--extra-index-url "$VCAM_TORCH_INDEX")
  if [ -z "$spec" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      spec="torch"; echo "vcam: NVIDIA GPU found: installing the CUDA build of torch"
    elif [ "$(uname -s)" = "Darwin" ]; then
      spec="torch"; echo "vcam: macOS: installing torch with Apple MPS support"
    else
      spec="torch"; echo "vcam: no NVIDIA GPU: installing the CPU build of torch"
      [ -n "${VCAM_TORCH_INDEX:-}" ] || index=(--index-url https://download.pytorch.org/whl/cpu)  # the CPU wheel; that index also carries its dependencies
    fi
  fi
  "${pip[@]}" install ${index[@]+"${index[@]}"} "$spec"
fi
"${pip[@]}" install -e "$here[test]"
echo "vcam: installed; run it with $venv/bin/vcam run   (or activate: . $venv/bin/activate)"

if [ "$demo" = 1 ]; then
  "$venv/bin/vcam" doctor || true
  # The offline tiny model restyles the sample photo: vcam-demo.mp4 (input | output) and vcam-demo.png (4 styles).
  "$venv/bin/vcam" demo --out .
fi
