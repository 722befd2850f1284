#!/usr/bin/env bash
# Install vcam (Linux, macOS) into a virtual environment with the right PyTorch build, or upgrade it in place.
#   bash installer/install.sh [--prefix DIR] [--demo]     install or upgrade; --demo then runs the offline demo
#   bash installer/install.sh [--prefix DIR] --uninstall  remove what this script added, nothing else
# Environment:
#   VCAM_TORCH="torch==2.13.0"   pip requirement for torch instead of the automatic choice
#   VCAM_TORCH_INDEX=URL         PyTorch index to try (as an extra index) instead of the one picked for this machine
#   VCAM_VENV=DIR                same as --prefix (default: .venv beside this repository)
#   PYTHON=python3.11            the Python that creates the environment (3.10 or newer)
#
# Why a script and not a bare `pip install`: the torch build must match the machine (CUDA where an NVIDIA driver
# answers, the default wheel with MPS on macOS, the CPU wheel elsewhere, which is ~2 GB smaller than Linux's default
# CUDA wheel). PyTorch's own index is tried as an *extra* index, so torch's dependencies still come from the index
# you configured for pip; where PyTorch's index cannot be reached (a company mirror, an offline wheelhouse) the
# install says so in one line and takes torch from your configured index instead.
# Re-running upgrades vcam and its dependencies in place; your presets and models live outside the environment
# and are never touched. --uninstall removes the environment (or, in one this script did not create, only vcam),
# the background service if it runs this installation, and vcam's caches and logs; it keeps your presets and the
# models in the Hugging Face cache, and says where they are.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VCAM_VENV:-$here/.venv}"
action=install
demo=0
while [ $# -gt 0 ]; do
  case "$1" in
    --demo) demo=1 ;;
    --uninstall) action=uninstall ;;
    --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a folder" >&2; exit 2; }; venv="$2"; shift ;;
    --prefix=*) venv="${1#--prefix=}" ;;
    -h|--help) sed -n 2,20p "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (known: --prefix DIR, --demo, --uninstall, --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$(dirname "$venv")"
venv="$(cd "$(dirname "$venv")" && pwd)/$(basename "$venv")"
marker="$venv/.vcam-installer"  # "created": this script made the environment; "reused": it only added vcam

uninstall() {
  if [ ! -f "$marker" ]; then
    echo "install.sh: $venv holds no vcam installed by this script; nothing removed"
    return 0
  fi
  "$venv/bin/vcam" service uninstall --only-for "$venv" || true
  # vcam's own files outside the environment that it can make again: the engine cache, tiny-random, logs.
  "$venv/bin/python" -c 'import platformdirs; print(platformdirs.user_cache_dir("vcam")); print(platformdirs.user_state_dir("vcam"))' |
    while IFS= read -r folder; do [ -z "$folder" ] || rm -rf "$folder"; done
  kept="$("$venv/bin/python" -c 'from vcam.presets import user_preset_dir; from engines.loading import hf_hub_cache_dir; print(f"your presets in {user_preset_dir()}, models in {hf_hub_cache_dir()}")' 2>/dev/null || true)"
  if [ "$(cat "$marker")" = created ]; then
    rm -rf "$venv"
    echo "vcam: removed $venv"
  else
    "$venv/bin/python" -m pip uninstall -y -q vcam
    rm -f "$marker"
    echo "vcam: removed vcam from $venv (the environment was there before; it stays)"
  fi
  rm -rf "$here/vcam.egg-info"
  [ -z "$kept" ] || echo "vcam: kept $kept"
}

python="${PYTHON:-python3}"
if [ "$action" = uninstall ]; then uninstall; exit 0; fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
  echo "install.sh: vcam needs Python 3.10 or newer; install it and run again (or set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  if [ -e "$venv" ] && [ -n "$(ls -A "$venv" 2>/dev/null)" ]; then
    echo "install.sh: $venv exists and is not a virtual environment; pass --prefix with a new or empty folder" >&2
    exit 1
  fi
  "$python" -m venv "$venv"
  echo created > "$marker"
elif [ ! -f "$marker" ]; then
  echo reused > "$marker"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip >/dev/null

# The torch build for this machine, and PyTorch's index that carries it.
system="$(uname -s)"
nvidia=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then nvidia=1; fi
if [ "$nvidia" = 1 ]; then
  build="CUDA"; index="https://download.pytorch.org/whl/cu126"
elif [ "$system" = Darwin ]; then
  build="Apple MPS"; index=""  # the default macOS wheel carries MPS
else
  build="CPU"; index="https://download.pytorch.org/whl/cpu"
fi
index="${VCAM_TORCH_INDEX:-$index}"
spec="${VCAM_TORCH:-torch}"

reachable() {  # whether a pip index answers within 10 s (through the same proxy settings pip uses)
  "$venv/bin/python" - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10).close()
PY
}

have_torch="$("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
index_args=()
if [ -n "$index" ]; then
  if reachable "$index"; then
    index_args=(--extra-index-url "$index")
  else
    echo "vcam: PyTorch's index $index cannot be reached; taking torch from your configured pip index instead (set VCAM_TORCH_INDEX to a mirror of it to choose the build)"
    index=""
    if [ -z "${VCAM_TORCH:-}" ] && [ "$build" = CPU ] && [ -z "$have_torch" ]; then
      # Without PyTorch's index a plain `torch` is Linux's CUDA wheel (~2 GB more); a +cpu build on the configured
      # index or find-links (a mirror, a wheelhouse) is the one this machine wants.
      cpu="$("$venv/bin/python" -m pip index versions torch 2>/dev/null | sed -n 's/^Available versions: //p' | tr ',' '\n' | tr -d ' ' | grep '+cpu$' | head -n 1 || true)"
      [ -z "$cpu" ] || spec="torch==$cpu"
    fi
  fi
fi
if [ -n "$have_torch" ] && [ -z "${VCAM_TORCH:-}" ] && [ -z "$index" ] && [ "$system" != Darwin ]; then
  echo "vcam: keeping the installed torch $have_torch (PyTorch's index is not in reach to upgrade it to the same build)"
else
  echo "vcam: installing torch ($build build: $spec${index:+ from $index})"
  "${pip[@]}" install --upgrade ${index_args[@]+"${index_args[@]}"} "$spec"
fi

extras="test"
[ "$nvidia" = 0 ] || extras="$extras,tensorrt"
echo "vcam: installing vcam with [$extras] into $venv"
"${pip[@]}" install --upgrade --upgrade-strategy only-if-needed -e "$here[$extras]"
echo "vcam: installed $("$venv/bin/vcam" --version); next: $venv/bin/vcam doctor, then $venv/bin/vcam run"

if [ "$demo" = 1 ]; then
  "$venv/bin/vcam" doctor --preset tiny || true
  # The offline tiny model restyles the sample photo: vcam-demo.mp4 (input | output) and vcam-demo.png (4 styles).
  "$venv/bin/vcam" demo --out .
fi
