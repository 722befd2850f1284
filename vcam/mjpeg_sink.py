"""`mjpeg` / `mjpeg:PORT`: the output as an MJPEG-over-HTTP stream (the server is `vcam.mjpeg`)."""
from __future__ import annotations

import numpy as np

from vcam.mjpeg import MjpegServer, MjpegServerError
from vcam.sink_base import PreparedOnce, SinkConfig, SinkError, fit_to_config

DEFAULT_MJPEG_PORT = 8090


class MjpegSink:
    """The MJPEG-over-HTTP stream (see `vcam.mjpeg`); `url` is what to give OBS's Media Source or a browser."""

    def __init__(self, port: int, config: SinkConfig) -> None:
        self.fps = config.fps
        self._config = config
        try:
            self._server = MjpegServer(port, config.fps, quality=config.jpeg_quality)
        except MjpegServerError as error:
            raise SinkError(str(error)) from None
        self.port = self._server.port
        self.url = self._server.url
        self._prepared = PreparedOnce(self._fitted)  # a paced repeat is neither fitted nor JPEG-encoded again

    def _fitted(self, frame: np.ndarray) -> np.ndarray:
        fitted = fit_to_config(frame, self._config)
        # JPEG encoding happens later on a client thread: it must not see a buffer the pipeline reuses.
        return fitted.copy() if np.may_share_memory(fitted, frame) else fitted

    def write(self, frame: np.ndarray) -> None:
        self._server.publish(self._prepared(frame))  # the same array again keeps its JPEG (vcam.mjpeg)

    def close(self) -> None:
        self._server.close()


def parse_port(arg: str) -> int:
    """The port of `mjpeg:PORT` (DEFAULT_MJPEG_PORT when empty); SinkError naming the form otherwise."""
    if not arg:
        return DEFAULT_MJPEG_PORT
    if not arg.isdigit() or int(arg) > 65535:
        raise SinkError(f"mjpeg port must be a number from 0 to 65535, got {arg!r} (e.g. mjpeg:8090)")
    return int(arg)
