"""OBS shows our stream: the running service publishes to its MJPEG sink, OBS's Media Source reads it, and the
screenshot OBS takes of that source (GetSourceScreenshot over the WebSocket) matches the frame we published."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from vcam import commands as cmd
from vcam.cli import build_parser
from vcam.framing import fit_frame
from vcam.service import Service, ServiceOptions
from vcam.settings import resolve_settings
from vcam.sinks import SinkConfig, open_sink


class LastFrameTee:
    """Passes frames to the real MJPEG sink and keeps the last one, as published."""

    def __init__(self, sink) -> None:
        self.sink = sink
        self.fps = sink.fps
        self.last: np.ndarray | None = None

    def write(self, frame: np.ndarray) -> None:
        self.last = frame
        self.sink.write(frame)

    def close(self) -> None:
        self.sink.close()


@pytest.mark.timeout(900)  # generous: the model and OBS are slow to start on a loaded machine
def test_obs_media_source_shows_the_frame_the_service_published(obs_instance, tiny_user_cache) -> None:
    args = build_parser().parse_args(["run", "--model", "tiny", "--source", "synthetic:static", "--no-ssf",
                                      "--width", "128", "--height", "128", "--output-size", "320x180"])
    settings = resolve_settings(args)
    mjpeg = open_sink("mjpeg:0", SinkConfig(width=320, height=180, fps=10))
    tee = LastFrameTee(mjpeg)
    service = Service(settings, ServiceOptions(tray=False, hotkeys=False, status_line=False),
                      sink=tee)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 600  # generous: loading the model takes minutes on a loaded machine
        while not service.ready_event.is_set():
            assert time.monotonic() < deadline and thread.is_alive(), service.messages
            time.sleep(0.1)
        # A still scene: after T stylised frames the picture no longer changes (a few more, to be sure). Counted
        # in results, not processed: the pass-through card goes on beside the model's first call after "ready".
        settled = 2 * service.stream.config.steps + 2
        while service.pipeline.stats().results < settled:
            assert time.monotonic() < deadline + 240 and thread.is_alive(), service.messages
            time.sleep(0.1)
        published = fit_frame(tee.last, 320, 180, "crop")  # RGB, as the sink shapes it
        shown_bgr = obs_instance.screenshot_media_url(mjpeg.url, width=320, height=180)
    finally:
        service.queue.put(cmd.Quit(), "cli")
        thread.join(timeout=120)
    shown = cv2.cvtColor(shown_bgr, cv2.COLOR_BGR2RGB)
    # Compare at 80x45: the random-weight picture is mostly fine grain, which JPEG and OBS's scaler smear.
    small = [cv2.resize(x, (80, 45), interpolation=cv2.INTER_AREA).astype(np.float32) for x in (shown, published)]
    difference = np.abs(small[0] - small[1]).mean()
    assert published.std() > 5  # a real picture, not a flat card
    assert difference < 12.0, difference  # JPEG + OBS's YUV conversion, nothing more
