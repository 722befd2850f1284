"""`vcam doctor`: one line per thing vcam can use on this machine, OK / WARN / FAIL, and the fix where it is not OK.

It only looks (imports, device queries, opening the camera and the virtual camera briefly, one OBS handshake); it
changes nothing. The checks are judged against one preset (the one `vcam run` would start: `--preset`, else the
default): FAIL means something that preset needs does not work, and only then is the exit status non-zero; WARN
means something does not work but vcam has a fallback (camera 0 missing: the sample photo; no virtual camera: a
window or MJPEG) or it only matters for other settings.
"""
from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

Status = Literal["OK", "WARN", "FAIL"]
MIN_CACHE_FREE_BYTES = 2 << 30  # an SD 1.5 ONNX graph set is ~4 GB, a TensorRT plan ~2 GB; below this a build may fail
OBS_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Check:
    """One line of the report. `fix` is what to do (empty when OK); `needed` marks a FAIL that stops the preset."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def needed(self) -> bool:
        return self.status == "FAIL"

    def line(self) -> str:
        fix = f" -> {self.fix}" if self.fix else ""
        return f"{self.status:<4} {self.name:<14} {self.detail}{fix}"


def _python() -> list[Check]:
    version = platform.python_version()
    ok = sys.version_info >= (3, 10)
    return [Check("python", "OK" if ok else "FAIL", f"{version} on {platform.system()} {platform.machine()}",
                  "" if ok else "install Python 3.10 or newer and run installer/install.sh again")]


def _nvidia_driver() -> str:
    """The driver version nvidia-smi reports, or "" when no NVIDIA driver answers."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else ""


def _torch_and_gpu(engine: str, device: str) -> list[Check]:
    import torch

    from engines.weight_files import torch_loader_problem

    checks = []
    problem = torch_loader_problem(str(torch.__version__))
    cuda_build = torch.version.cuda
    build = f"CUDA {cuda_build}" if cuda_build else "CPU"
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if mps:
        build = "Apple MPS"
    checks.append(Check("torch", "FAIL" if problem else "OK", f"{torch.__version__} ({build} build)", problem))
    driver = _nvidia_driver()
    wants_gpu = device.startswith(("cuda", "mps")) or engine == "tensorrt"
    if torch.cuda.is_available():
        checks.append(Check("gpu", "OK", f"{torch.cuda.get_device_name(0)}; driver {driver or 'unknown'}"))
    elif mps:
        checks.append(Check("gpu", "OK", "Apple GPU (MPS)"))
    elif driver:
        checks.append(Check("gpu", "FAIL" if wants_gpu else "WARN",
                            f"NVIDIA driver answers ({driver}) but this torch is a {build} build",
                            "reinstall torch for CUDA: VCAM_TORCH_INDEX=https://download.pytorch.org/whl/cu126 "
                            "bash installer/install.sh"))
    else:
        checks.append(Check("gpu", "FAIL" if wants_gpu else "WARN",
                            "no NVIDIA GPU or Apple MPS: vcam runs on the CPU (real time only with the tiny model)",
                            "real models need an NVIDIA GPU with its driver (nvidia-smi must answer) or Apple silicon"))
    return checks


def _runtimes(engine: str) -> list[Check]:
    checks = []
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime

        providers = ", ".join(onnxruntime.get_available_providers())
        checks.append(Check("onnxruntime", "OK", f"{onnxruntime.__version__}: {providers}"))
    else:
        checks.append(Check("onnxruntime", "FAIL" if engine == "onnxruntime" else "WARN", "not installed",
                            "pip install onnxruntime (onnxruntime-gpu on NVIDIA, onnxruntime-directml on Windows)"))
    checks.append(_openvino(engine))
    if importlib.util.find_spec("tensorrt"):
        import tensorrt

        checks.append(Check("tensorrt", "OK", f"{tensorrt.__version__}"))
    elif engine == "tensorrt":
        checks.append(Check("tensorrt", "FAIL", "not installed", "pip install 'vcam[tensorrt]' (NVIDIA GPU only)"))
    else:
        checks.append(Check("tensorrt", "OK", "not installed (only used on NVIDIA GPUs, with --engine tensorrt)"))
    return checks


def _openvino(engine: str) -> Check:
    """OpenVINO's version, its devices, and the UNet precision `--precision auto` gets from it here (bf16 where the
    CPU computes it natively: engines.openvino_engine.resolve_unet_precision)."""
    from engines.base import EngineUnavailableError
    from engines.openvino_engine import openvino_install

    try:
        install = openvino_install()
    except EngineUnavailableError:
        return Check("openvino", "FAIL" if engine == "openvino" else "WARN", "not installed",
                     "pip install openvino (--engine openvino; --engine auto measures it against ONNX Runtime)")
    precision = ("the CPU computes bf16 natively: a bf16 UNet by default" if install.native_bf16
                 else "fp32 on the CPU (no native bf16 here)")
    return Check("openvino", "OK", f"{install.release}: {', '.join(install.devices)}; {precision}")


def _model(preset_name: str, model: str, vae: str) -> list[Check]:
    from engines.base import ModelError
    from engines.loading import ModelSpec, resolve_model

    spec = ModelSpec(model=model, vae=vae or None)
    try:
        resolved = resolve_model(spec)
    except ModelError as error:
        return [Check("model", "FAIL", f"{preset_name}: {error}",
                      f"vcam models pull {preset_name} (offline it says what to copy where); meanwhile "
                      "`vcam run` falls back to tiny")]
    return [Check("model", "OK", f"preset {preset_name} uses {model}: all its files are in {resolved.path}")]


def _camera(source: str) -> list[Check]:
    kind, _, arg = source.partition(":")
    if kind != "camera":
        if kind in ("sample", "synthetic") or Path(source).expanduser().exists():
            return [Check("camera", "OK", f"source {source!r} (no camera needed)")]
        return [Check("camera", "FAIL", f"source {source!r} does not exist", "fix [camera] source or --source")]
    from vcam.camera_source import open_video_capture
    from vcam.sources import SourceError

    device = int(arg) if arg.strip().isdigit() else (arg.strip() or 0)
    try:
        open_video_capture(device).release()
    except SourceError:
        return [Check("camera", "WARN", f"camera {device!r} does not open: `vcam run` uses the sample photo instead",
                      "plug in a camera, close apps using it, or pass --source camera:1 / a video file")]
    return [Check("camera", "OK", f"camera {device!r} opens")]


def _virtual_camera(sink: str) -> list[Check]:
    from vcam.sinks import SinkConfig, SinkError, VirtualCameraSink
    from vcam.virtual_camera import virtual_camera_fix

    try:
        camera = VirtualCameraSink(SinkConfig(width=640, height=480, fps=30))
    except SinkError as error:
        problem = str(error).removesuffix(f"; {virtual_camera_fix()}")  # the fix has its own column: said once
        fix = ("bash installer/linux/setup-v4l2loopback.sh" if sys.platform.startswith("linux")
               else "install OBS Studio and start its Virtual Camera once (or Unity Capture on Windows)")
        status: Status = "FAIL" if sink.split(":")[0] == "vcam" else "WARN"
        fallback = "" if status == "FAIL" else "; `vcam run` shows a window or an MJPEG stream instead"
        return [Check("virtual camera", status, f"{problem}{fallback}", fix)]
    detail = f"{camera.backend} device {camera.device}"
    camera.close()
    return [Check("virtual camera", "OK", detail)]


def _desktop_controls() -> list[Check]:
    from vcam.controls.hotkeys import hotkey_backend_problem
    from vcam.qt_host import QtHost

    checks = []
    problem = hotkey_backend_problem()
    checks.append(Check("hotkeys", "WARN" if problem else "OK", problem or "global hotkeys can be read",
                        "run inside an X11 desktop session" if problem else ""))
    problem = QtHost.problem()
    if problem is None:
        problem = _tray_host_problem()
    checks.append(Check("tray", "WARN" if problem else "OK", problem or "a system tray is available",
                        "run inside a desktop session with a system tray (or use --no-tray)" if problem else ""))
    return checks


def _tray_host_problem() -> str | None:
    """Whether a system tray host answers, asked in a child (a QApplication here would stay for the whole run)."""
    script = ("from PySide6.QtWidgets import QApplication, QSystemTrayIcon; app = QApplication(['vcam-doctor']); "
              "print(QSystemTrayIcon.isSystemTrayAvailable())")
    try:
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "Qt did not answer within 60 s"
    if result.stdout.strip() == "True":
        return None
    return "no system tray host is running (the desktop shows no tray icons)"


def _obs(enabled: bool, host: str, port: int) -> list[Check]:
    """One handshake and log-in, as `vcam run --obs` makes. Nothing listening is a WARN even for a preset that uses
    OBS (vcam connects whenever OBS starts); a refused password is a FAIL for such a preset (it never connects)."""
    from vcam.controls.obs import START_OBS_FIX, ObsConfig, explain_connect_failure, quiet_obsws_logging
    from vcam.secrets import lookup_secret

    where = f"{host}:{port}"
    try:
        socket.create_connection((host, port), timeout=OBS_TIMEOUT_S).close()
    except OSError:
        if not enabled:
            return [Check("obs", "OK", f"not used by this preset (nothing listens at {where})")]
        return [Check("obs", "WARN", f"nothing listens at {where}: vcam connects when OBS starts", START_OBS_FIX)]
    config = ObsConfig(host=host, port=port)
    secret = lookup_secret(config.password_env, "obs", config.use_keyring)
    quiet_obsws_logging()
    try:
        import obsws_python

        client = obsws_python.ReqClient(host=host, port=port, password=secret.value, timeout=OBS_TIMEOUT_S)
        version = client.get_version().obs_version
        client.disconnect()
    except Exception as error:  # noqa: BLE001 - obsws-python raises bare exceptions; explain_connect_failure reads them
        failure = explain_connect_failure(error, config, secret.origin)
        return [Check("obs", "FAIL" if enabled else "WARN", failure.problem, failure.fix)]
    return [Check("obs", "OK", f"OBS {version} at {where}, password accepted")]


def _disk(engine: str) -> list[Check]:
    from engines.engine_cache import default_cache_root

    root = default_cache_root()
    existing = next(p for p in (root, *root.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    detail = f"{free / 2**30:.1f} GB free for the engine cache ({root})"
    if free >= MIN_CACHE_FREE_BYTES:
        return [Check("disk", "OK", detail)]
    builds = engine in ("onnxruntime", "tensorrt")
    return [Check("disk", "FAIL" if builds else "WARN", detail,
                  f"free {MIN_CACHE_FREE_BYTES >> 30} GB there, or `vcam models prune`")]


def collect_checks(preset_name: str) -> list[Check]:
    """Every check for `preset_name`; a check that itself breaks becomes a FAIL line naming it, never a traceback."""
    from vcam.presets import load_preset

    preset = load_preset(preset_name)
    engine, device = preset.model.engine, preset.model.device
    sections: list[tuple[str, Callable[[], list[Check]]]] = [
        ("python", _python),
        ("torch", lambda: _torch_and_gpu(engine, str(device))),
        ("runtimes", lambda: _runtimes(engine)),
        ("model", lambda: _model(preset.name, preset.model.model, preset.model.vae)),
        ("camera", lambda: _camera(preset.camera.source)),
        ("virtual camera", lambda: _virtual_camera(preset.output.sink)),
        ("desktop", _desktop_controls),
        ("obs", lambda: _obs(preset.obs.enabled, preset.obs.host, preset.obs.port)),
        ("disk", lambda: _disk(engine)),
    ]
    checks: list[Check] = []
    for name, section in sections:
        try:
            checks += section()
        except Exception as error:  # noqa: BLE001 - doctor reports, it never fails
            checks.append(Check(name, "WARN", f"the check itself failed: {type(error).__name__}: {error}"))
    return checks


def run_doctor(preset_name: str, as_json: bool = False) -> int:
    """Print the report; 1 when a check the preset needs failed, else 0."""
    checks = collect_checks(preset_name)
    failed = any(check.needed for check in checks)
    if as_json:
        print(json.dumps({"preset": preset_name, "ok": not failed,
                          "checks": [asdict(check) for check in checks]}))
    else:
        print(f"vcam doctor: checks for the preset {preset_name!r}")
        for check in checks:
            print(check.line())
    return 1 if failed else 0
