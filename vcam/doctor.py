"""`vcam doctor`: one line per thing vcam can use on this machine, and what to do where something is missing.

It only looks (imports, device queries, opening camera 0 briefly); it changes nothing.
"""
from __future__ import annotations

import importlib.util
import os
import platform


def _check(label: str, ok: bool, detail: str) -> bool:
    print(f"[{'ok' if ok else '--'}] {label:<16} {detail}")
    return ok


def _torch_lines() -> None:
    import torch

    from engines.weight_files import torch_loader_problem

    _check("python", True, f"{platform.python_version()} on {platform.system()} {platform.machine()}")
    problem = torch_loader_problem(str(torch.__version__))
    if problem:
        print(f"[FAIL] {'torch':<16} {problem}")
    else:
        _check("torch", True, f"{torch.__version__}, {torch.get_num_threads()} CPU threads")
    cuda = torch.cuda.is_available()
    _check("cuda", cuda, torch.cuda.get_device_name(0) if cuda else "no NVIDIA GPU visible to torch (CPU or MPS is used)")
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    _check("mps", mps, "Apple GPU available" if mps else "not available (only on Apple silicon macOS)")


def _engine_lines() -> None:
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime

        _check("onnxruntime", True, f"{onnxruntime.__version__}: {', '.join(onnxruntime.get_available_providers())}")
    else:
        _check("onnxruntime", False, "not installed: pip install onnxruntime (or onnxruntime-gpu)")
    has_trt = importlib.util.find_spec("tensorrt") is not None
    _check("tensorrt", has_trt, "installed" if has_trt else "not installed: pip install 'vcam[tensorrt]' (NVIDIA GPU only)")


def _io_lines() -> None:
    from vcam.sinks import detect_sinks

    try:
        import cv2

        cap = cv2.VideoCapture(0)
        opened = bool(cap.isOpened())
        cap.release()
    except Exception as error:  # noqa: BLE001 - doctor reports, it never fails
        opened, error_text = False, str(error)
    else:
        error_text = "no camera 0: `vcam run` will use the synthetic source (or pass --source FILE)"
    _check("camera 0", opened, "opens" if opened else error_text)
    for line in detect_sinks():
        _check("output", not line.startswith("-"), line.lstrip("+- "))
    display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    _check("display", bool(display) or platform.system() != "Linux",
           display or "no DISPLAY: no tray, hotkeys or preview window (headless mode still works)")


def _model_lines() -> None:
    from engines.testmodel import TINY_MODEL_VERSION, default_cache_root

    path = default_cache_root() / TINY_MODEL_VERSION
    _check("tiny model", path.exists(), str(path) if path.exists() else "built on first `vcam run --model tiny`")


def run_doctor() -> int:
    for section in (_torch_lines, _engine_lines, _io_lines, _model_lines):
        try:
            section()
        except Exception as error:  # noqa: BLE001
            _check(section.__name__.strip("_").replace("_lines", ""), False, f"check failed: {error}")
    return 0
