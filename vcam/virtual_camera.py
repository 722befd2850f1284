"""`vcam` / `vcam:DEVICE`: the virtual camera, through pyvirtualcam (v4l2loopback on Linux, OBS or Unity Capture
elsewhere)."""
from __future__ import annotations

import platform

import numpy as np

from core.pacing import FramePacer
from vcam.sink_base import PreparedOnce, SinkConfig, SinkError, fit_to_config


def virtual_camera_fix() -> str:
    """How to get a virtual camera device on this platform (the part of the error a user acts on)."""
    if platform.system() == "Linux":
        return ("create one with `sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=vcam` "
                "(or run installer/linux/setup-v4l2loopback.sh), or use --sink mjpeg / window / a file")
    return "install OBS Studio and start its Virtual Camera once, or use --sink mjpeg / window / a file"


class VirtualCameraSink:
    """The virtual camera, through pyvirtualcam (v4l2loopback on Linux, OBS or Unity Capture elsewhere).

    `write` never sends faster than `fps`: it waits on its `pacer` (`core.pacing.FramePacer`) only when called
    early. The pipeline runs its output thread on this same pacer, so the stream has one clock and a write from
    the pipeline never waits twice. Frames go to pyvirtualcam as RGB, its default input format: each of its
    backends converts RGB to its device's native format itself (`pyvirtualcam.Camera.native_fmt`), so no
    conversion table is kept here.
    """

    def __init__(self, config: SinkConfig, device: str | None = None) -> None:
        import pyvirtualcam

        names = list(pyvirtualcam.camera.BACKENDS)
        if config.backend is not None and config.backend not in names:
            raise SinkError(f"unknown virtual camera backend {config.backend!r}; "
                            f"this platform has: {', '.join(names) or 'none'}")
        self.fps = config.fps
        # fitted once per frame: a paced repeat (the model slower than the camera) reuses it
        self._prepared = PreparedOnce(lambda frame: fit_to_config(frame, config))
        try:
            self._camera = pyvirtualcam.Camera(config.width, config.height, config.fps,
                                               fmt=pyvirtualcam.PixelFormat.RGB,
                                               device=device, backend=config.backend)
        except (RuntimeError, ValueError) as error:
            # pyvirtualcam joins one line per backend tried; we keep them, on one line, before the fix.
            tried = "; ".join(line for line in str(error).splitlines() if line) or "no backend for this platform"
            raise SinkError(f"no virtual camera ({tried}); {virtual_camera_fix()}") from None
        self.backend: str = self._camera.backend
        self.device: str = self._camera.device
        self.pacer = FramePacer(config.fps)

    def write(self, frame: np.ndarray) -> None:
        fitted = self._prepared(frame)
        self.pacer.wait()
        self._camera.send(fitted)
        self.pacer.sent()

    def close(self) -> None:
        self._camera.close()

