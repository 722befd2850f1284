"""Specification of the frame sources: specs, files, patterns, pacing and surviving a lost camera."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.media import (close_colour, coloured_frame, distinct_colours, notice_pixels, photo_camera_clip, write_image,
                         write_video)
from vcam.camera_source import ask_camera_mode, open_video_capture
from vcam.generated_sources import SyntheticSource
from vcam.overlay import notices_of
from vcam.reconnecting_source import CAMERA_LOST_NOTICE, ReconnectingSource, RetryPolicy
from vcam.sources import SourceConfig, SourceError, open_source

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def clip(tmp_path: Path) -> tuple[Path, list[tuple[int, int, int]]]:
    colours = distinct_colours(4)
    return write_video(tmp_path / "clip.avi", [coloured_frame(c) for c in colours], fps=25), colours


def read_n(source, count: int) -> list[np.ndarray]:
    return [source.read() for _ in range(count)]


def test_video_file_frames_come_out_as_rgb_in_order(clip):
    path, colours = clip
    source = open_source(str(path), SourceConfig(loop=False))
    frames = read_n(source, 4)
    assert source.read() is None, "loop=False ends the stream after the last frame"
    source.close()
    assert source.live is False, "a file is read as fast as consumed unless asked to be live"
    for frame, colour in zip(frames, colours):
        assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
        assert close_colour(frame, colour), "channels are RGB, not OpenCV's BGR"


def test_video_file_loops_by_default_as_a_camera_stand_in(clip):
    path, colours = clip
    source = open_source(str(path))
    frames = read_n(source, 9)
    source.close()
    expected = colours + colours + colours[:1]
    assert all(close_colour(f, c) for f, c in zip(frames, expected))


def test_live_video_file_is_paced_at_the_files_own_rate(tmp_path):
    path = write_video(tmp_path / "fast.avi", [coloured_frame(c) for c in distinct_colours(3)], fps=40)
    source = open_source(str(path), SourceConfig(live=True, fps=10))  # fps is only a camera request
    assert source.live is True
    source.read()
    start = time.perf_counter()
    read_n(source, 6)
    elapsed = time.perf_counter() - start
    source.close()
    assert 6 / 40 * 0.9 <= elapsed < 6 / 40 + 3.0  # waits between frames (the upper bound only catches a hang)


@pytest.mark.parametrize("kind", ["video", "image", "synthetic"])
def test_close_ends_a_paced_read_at_once(tmp_path, kind):
    slow = 0.5  # frames per second: a paced read would wait two seconds
    if kind == "video":
        spec = str(write_video(tmp_path / "slow.avi", [coloured_frame((1, 2, 3))] * 3, fps=slow))
    elif kind == "image":
        spec = str(write_image(tmp_path / "still.png", coloured_frame((1, 2, 3))))
    else:
        spec = "synthetic"
    source = open_source(spec, SourceConfig(width=32, height=32, fps=slow, live=True))
    assert source.read() is not None, "the first frame comes at once"
    results = []
    reader = threading.Thread(target=lambda: results.append(source.read()))
    reader.start()
    time.sleep(0.1)
    start = time.perf_counter()
    source.close()
    reader.join(timeout=5)
    assert time.perf_counter() - start < 0.5
    assert source.read() is None


def test_image_file_is_a_still_frame_repeated(tmp_path):
    path = write_image(tmp_path / "still.png", coloured_frame((10, 120, 240)))
    source = open_source(str(path))
    first, second = source.read(), source.read()
    assert np.array_equal(first, coloured_frame((10, 120, 240))), "png is lossless and RGB"
    first[:] = 0
    assert np.array_equal(second, source.read()), "a consumer drawing on one frame cannot change the next"
    source.close()
    once = open_source(str(path), SourceConfig(loop=False))
    assert once.read() is not None and once.read() is None


def test_synthetic_pattern_is_deterministic_and_moves():
    a = open_source("synthetic", SourceConfig(width=96, height=64))
    b = open_source("synthetic", SourceConfig(width=96, height=64))
    frames_a, frames_b = read_n(a, 5), read_n(b, 5)
    assert a.live is False, "generated as fast as consumed by default"
    assert frames_a[0].shape == (64, 96, 3) and frames_a[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(frames_a, frames_b))
    assert not np.array_equal(frames_a[0], frames_a[4])
    step = np.abs(frames_a[1].astype(int) - frames_a[0].astype(int)).mean()
    assert step < 40, "motion is smooth from one frame to the next"
    assert np.array_equal(SyntheticSource(96, 64).frame(3), frames_a[3]), "frame content depends on index only"


def test_synthetic_static_never_changes():
    source = open_source("synthetic:static", SourceConfig(width=64, height=64))
    frames = read_n(source, 3)
    assert all(np.array_equal(frames[0], f) for f in frames[1:])


@pytest.mark.parametrize("spec", ["synthetic", "sample"])
def test_generated_source_with_fps_is_live_and_paced(spec: str):
    source = open_source(spec, SourceConfig(width=64, height=64, fps=50))
    assert source.live is True
    source.read()
    start = time.perf_counter()
    read_n(source, 5)
    assert time.perf_counter() - start >= 5 / 50 * 0.9
    source.close()
    assert source.read() is None, "closed: no more frames"


@pytest.mark.parametrize("spec,message", [
    ("nosuchkind:3", "unknown source kind 'nosuchkind'"),
    ("/no/such/clip.mp4", "source file not found: /no/such/clip.mp4"),
    ("synthetic:plaid", "synthetic:static"),
    ("", "camera:0"),
])
def test_bad_specs_give_one_line_errors_naming_the_fix(spec, message):
    with pytest.raises(SourceError) as error:
        open_source(spec)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unreadable_files_give_one_line_errors(tmp_path):
    bad_video = tmp_path / "broken.mp4"
    bad_video.write_bytes(b"not a video at all")
    bad_image = tmp_path / "broken.png"
    bad_image.write_bytes(b"not an image")
    for path, message in ((bad_video, "cannot read video file"), (bad_image, "cannot read image file")):
        with pytest.raises(SourceError, match=message):
            open_source(str(path))


class RecordedCapture:
    """A real OpenCV capture that remembers which properties it was asked to set (there is no camera here).
    It holds the capture rather than subclassing it: a Python subclass of cv2.VideoCapture crashes the
    garbage collector."""

    def __init__(self, target: str) -> None:
        self.capture = cv2.VideoCapture(target)
        self.asked: dict[int, float] = {}

    def set(self, prop: int, value: float) -> bool:
        self.asked[prop] = value
        return self.capture.set(prop, value)

    def get(self, prop: int) -> float:
        return self.capture.get(prop)

    def release(self) -> None:
        self.capture.release()


MODE = (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_FPS, cv2.CAP_PROP_FOURCC)


@pytest.mark.parametrize("api", [cv2.CAP_ANY, cv2.CAP_V4L2])
def test_a_camera_asked_for_size_and_rate_0_keeps_its_own_mode(clip, api):
    capture = RecordedCapture(str(clip[0]))  # a 64x48 clip stands in for a camera's own mode
    assert ask_camera_mode(capture, SourceConfig(width=0, height=0, fps=None), api) == {}
    assert not set(MODE) & set(capture.asked), "no size, rate or pixel format is forced on the device"
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)
    capture.release()


def test_a_camera_is_asked_for_exactly_the_parts_of_the_mode_given(clip):
    capture = RecordedCapture(str(clip[0]))
    asked = ask_camera_mode(capture, SourceConfig(width=640, height=0, fps=15), cv2.CAP_V4L2)
    assert asked == {cv2.CAP_PROP_FRAME_WIDTH: 640, cv2.CAP_PROP_FPS: 15}
    assert cv2.CAP_PROP_FRAME_HEIGHT not in capture.asked and cv2.CAP_PROP_FOURCC in capture.asked  # MJPG on V4L2
    capture.release()


def test_missing_camera_gives_a_one_line_error_naming_what_to_try():
    # No camera exists on this machine, so index 9 is the real "camera that fails to open" case.
    with pytest.raises(SourceError) as error:
        open_source("camera:9", SourceConfig(width=64, height=48))
    message = str(error.value)
    assert "camera 9" in message and "another index" in message and "\n" not in message


def wait_for(source, predicate, timeout: float) -> tuple[np.ndarray, int]:
    """Read until a frame satisfies `predicate`; returns it and how many frames were read before it."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        frame = source.read()
        if predicate(frame):
            return frame, count
        count += 1
    raise AssertionError(f"no matching frame within {timeout} s ({count} frames read)")


def test_lost_camera_keeps_sending_the_last_frame_with_a_notice_and_resumes_when_back(tmp_path):
    """A real capture of a file stands in for the camera: its end is the camera going away; the file is
    removed (reopen fails, with back-off) and then restored with new content (the camera is back)."""
    path = tmp_path / "camera.avi"
    before, after = (200, 30, 30), (30, 30, 200)
    write_video(path, [coloured_frame(before)] * 3)
    fps = 50
    source = ReconnectingSource(lambda: open_video_capture(str(path)), fps=fps,
                                retry=RetryPolicy(first_delay=0.02, max_delay=0.1))
    assert source.live is True
    good = read_n(source, 3)
    assert all(close_colour(f, before) for f in good) and not source.lost

    os.rename(path, tmp_path / "unplugged.avi")
    start = time.perf_counter()
    notices = read_n(source, 10)
    elapsed = time.perf_counter() - start
    assert source.lost and source.losses == 1
    assert elapsed >= 9 / fps * 0.9, "notice frames are paced at the camera rate, not spun out"
    for notice in notices:
        assert np.array_equal(notice, good[-1]), "the last good picture is still shown, as it was"
        assert notices_of(notice) == CAMERA_LOST_NOTICE, "carrying the notice the output draws after fitting"
    assert source.reconnect_attempts >= 2, "reopen is retried while the device is away"

    write_video(path, [coloured_frame(after)] * 200)
    frame, waited = wait_for(source, lambda f: close_colour(f, after), timeout=5)
    assert not source.lost
    assert not notices_of(frame), "no notice once resumed"
    source.close()
    assert source.read() is None


def test_capture_that_never_delivered_shows_the_notice_on_a_black_frame(tmp_path):
    path = write_video(tmp_path / "one.avi", [coloured_frame((0, 0, 0))])

    def open_drained_capture():
        capture = open_video_capture(str(path))
        capture.read()  # the only frame is gone: the first read of the source already finds the capture dry
        return capture

    source = ReconnectingSource(open_drained_capture, fps=100, retry=RetryPolicy(first_delay=10),
                                blank_size=(80, 60))
    frame = source.read()
    source.close()
    assert frame.shape == (60, 80, 3) and frame.max() == 0
    assert notices_of(frame) == CAMERA_LOST_NOTICE and CAMERA_LOST_NOTICE[0].startswith("camera lost")


def test_a_programming_error_in_the_reconnect_loop_ends_the_stream_instead_of_being_retried_forever(tmp_path, caplog):
    path = write_video(tmp_path / "cam.avi", [coloured_frame((9, 9, 9))])
    opened = []

    def opener():
        if opened:
            raise TypeError("a bug in the opener")  # not a device that is away
        opened.append(True)
        return open_video_capture(str(path))

    source = ReconnectingSource(opener, fps=100, retry=RetryPolicy(first_delay=0.01, max_delay=0.02))
    read_n(source, 2)  # the one frame, then the capture is dry: lost, reconnecting
    with pytest.raises(TypeError, match="a bug in the opener"):
        wait_for(source, lambda frame: False, timeout=30)
    assert source.reconnect_attempts == 1, "no second attempt after a programming error"
    assert any("reconnecting stopped by an unexpected TypeError" in r.getMessage() for r in caplog.records)
    source.close()


def test_closing_stops_reconnecting_promptly(tmp_path):
    path = write_video(tmp_path / "cam.avi", [coloured_frame((9, 9, 9))])
    source = ReconnectingSource(lambda: open_video_capture(str(path)), fps=100,
                                retry=RetryPolicy(first_delay=0.01, max_delay=0.02))
    read_n(source, 3)  # one frame, then lost; the file stays, so reopen succeeds and loses again
    start = time.perf_counter()
    source.close()
    assert time.perf_counter() - start < 1.0
    assert source.read() is None


def test_live_video_file_deleted_mid_run_shows_its_last_picture_with_a_notice_and_resumes_when_back(tmp_path, caplog):
    path = tmp_path / "clip.avi"
    before, after = (200, 30, 30), (30, 30, 200)
    write_video(path, [coloured_frame(before)] * 3, fps=50)
    source = open_source(str(path), SourceConfig(live=True))
    good = read_n(source, 2)
    assert all(close_colour(f, before) for f in good)

    path.unlink()  # the open file is read to its end; the loop back to its start then finds it gone
    frame, _ = wait_for(source, lambda f: bool(notices_of(f)), timeout=30)
    assert close_colour(frame, before), "the last picture is kept, carrying the notice"
    assert source.live and source.read() is not None, "frames keep coming while the file is away"
    assert any("video file" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)
    assert not any("unsupported format" in r.getMessage() for r in caplog.records)

    write_video(path, [coloured_frame(after)] * 200, fps=50)
    frame, _ = wait_for(source, lambda f: close_colour(f, after), timeout=30)
    assert not notices_of(frame), "no notice once resumed"
    source.close()
    assert source.read() is None


def test_offline_video_file_deleted_mid_run_ends_with_one_line_saying_so(tmp_path):
    path = write_video(tmp_path / "clip.avi", [coloured_frame((9, 9, 9))] * 2)
    source = open_source(str(path), SourceConfig(live=False))
    read_n(source, 2)
    path.unlink()
    with pytest.raises(SourceError, match="can no longer be read \\(deleted or moved while running\\?\\)"):
        source.read()
    source.close()


@pytest.mark.timeout(900)  # generous: starting torch and the model takes minutes on a loaded machine
def test_live_vcam_run_survives_its_video_file_being_deleted_and_resumes_when_it_is_back(tmp_path, tiny_user_cache):
    """The real `vcam run` on a 640x480 clip standing in for the camera, streaming to a 16:9 MJPEG output (the
    crop cuts the camera's top rows): the clip deleted mid-run is a camera gone (the stream goes on, its notice
    shows on the output, one line says so), and the clip put back is the camera back."""
    import signal
    import socket
    import urllib.request

    import cv2

    from bench.stops import start_vcam

    clip, _ = photo_camera_clip(tmp_path / "clip.avi")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = start_vcam({"DISPLAY": ""}, "--source", str(clip), "--sink", f"mjpeg:{port}", "--no-tray",
                         "--output-size", "1280x720", "--fit", "crop")

    def snapshot() -> np.ndarray:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/frame.jpg", timeout=10) as response:
            assert response.status == 200
            return cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)

    def wait_for_snapshot(predicate, timeout: float = 120) -> np.ndarray:  # generous: catches a hang only
        deadline = time.monotonic() + timeout
        while not predicate(shown := snapshot()):
            assert time.monotonic() < deadline and process.poll() is None, "no such frame on the output"
            time.sleep(0.1)
        return shown

    try:
        lines = process.wait_for_line("first stylised frame")
        live = snapshot()
        assert live.shape == (720, 1280, 3)
        clip.unlink()
        lines += process.wait_for_line("stopped delivering frames", timeout=120)
        wait_for_snapshot(lambda shown: notice_pixels(shown, live) >= 25)  # the notice on the stylised output
        assert process.poll() is None, "the run goes on, the viewers keep getting pictures"
        write_video(clip, [coloured_frame((40, 60, 200), 640, 480)] * 10, fps=25)
        lines += process.wait_for_line("is back", timeout=120)
        assert process.poll() is None and snapshot().shape == (720, 1280, 3)
        process.send_signal(signal.SIGINT)
        rest = process.finish(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert "released" in rest, rest  # a clean stop (its exit status is the signal specs' business)
    output = "".join(lines) + rest
    assert "unsupported format" not in output and "Traceback" not in output, output
