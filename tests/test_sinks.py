"""Specification of the sinks: virtual camera (through pyvirtualcam), video files, MJPEG over HTTP, null."""
from __future__ import annotations

import platform
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import pyvirtualcam
from pyvirtualcam.util import encode_fourcc

from tests.media import close_colour, coloured_frame, distinct_colours, notice_pixels, photo_camera_clip, read_video
from vcam.framing import fit_frame
from vcam.overlay import with_notices
from vcam.sinks import SinkConfig, SinkError, detect_sinks, open_sink
import vcam.virtual_camera as virtual_camera_module
from vcam.virtual_camera import virtual_camera_fix

pytestmark = pytest.mark.timeout(60)

RECORDER = "vcam-test-recorder"


class RecordedDevice:
    """What reached the (fake) device: the one thing that cannot exist here is the device itself."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.opened_with: dict = {}
        self.closed = False


@pytest.fixture
def recorder():
    """A pyvirtualcam backend that records frames, registered for one test: pyvirtualcam's own shape and dtype
    checks and its pacing run for real in front of it."""
    device = RecordedDevice()

    class RecordingBackend:
        def __init__(self, *, width, height, fps, fourcc, device: str | None, **kw):
            device_record.opened_with = dict(width=width, height=height, fps=fps, fourcc=fourcc, device=device)

        def send(self, frame: np.ndarray) -> None:
            device_record.frames.append(frame.copy())

        def close(self) -> None:
            device_record.closed = True

        def device(self) -> str:
            return device_record.opened_with["device"] or "recorder0"

        def native_fourcc(self):
            return None

    device_record = device
    pyvirtualcam.register_backend(RECORDER, RecordingBackend)
    yield device
    del pyvirtualcam.camera.BACKENDS[RECORDER]  # pyvirtualcam has no unregister; leave its registry as found


def noisy_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_virtual_camera_receives_frames_fitted_to_the_configured_size_in_rgb(recorder):
    config = SinkConfig(width=128, height=72, fps=60, backend=RECORDER)
    sink = open_sink("vcam", config)
    assert sink.fps == 60
    source_frames = [noisy_frame(256, 256, seed) for seed in range(3)]
    for frame in source_frames:
        sink.write(frame)
    sink.close()
    assert recorder.opened_with["width"] == 128 and recorder.opened_with["height"] == 72
    assert recorder.closed and len(recorder.frames) == 3
    for sent, frame in zip(recorder.frames, source_frames):
        assert sent.dtype == np.uint8 and sent.size == 72 * 128 * 3
        assert np.array_equal(sent.reshape(72, 128, 3), fit_frame(frame, 128, 72, "crop"))


def test_virtual_camera_sends_a_paced_repeat_again_without_fitting_and_converting_it_again(recorder, monkeypatch):
    fits = []
    real_fit = virtual_camera_module.fit_to_config
    monkeypatch.setattr(virtual_camera_module, "fit_to_config", lambda *args: fits.append(1) or real_fit(*args))
    sink = open_sink("vcam", SinkConfig(width=128, height=72, fps=200, backend=RECORDER))
    frame = noisy_frame(256, 256)
    for _ in range(4):  # the model is slower than the camera: the pipeline writes its last frame again
        sink.write(frame)
    sink.write(frame.copy())  # a new frame is prepared anew
    sink.close()
    assert len(recorder.frames) == 5 and all(np.array_equal(sent, recorder.frames[0]) for sent in recorder.frames)
    assert len(fits) == 2


def test_virtual_camera_hands_pyvirtualcam_rgb_which_each_backend_converts_to_its_device_format(recorder):
    # pyvirtualcam's backends take the input format as a FourCC and convert to the device's native format
    # themselves (libyuv), so RGB is all vcam ever sends: no table of formats to keep here.
    frame = coloured_frame((220, 40, 10), 64, 48)
    sink = open_sink("vcam", SinkConfig(width=64, height=48, fps=60, backend=RECORDER))
    sink.write(frame)
    sink.close()
    assert recorder.opened_with["fourcc"] == encode_fourcc(pyvirtualcam.PixelFormat.RGB.value)
    assert np.array_equal(recorder.frames[0].reshape(48, 64, 3), frame), "RGB, in that channel order"


def test_virtual_camera_is_paced_at_its_fps_when_written_faster(recorder):
    sink = open_sink("vcam", SinkConfig(width=32, height=32, fps=25, backend=RECORDER))
    frame = noisy_frame(32, 32)
    start = time.perf_counter()
    for _ in range(6):
        sink.write(frame)
    elapsed = time.perf_counter() - start
    sink.close()
    assert 5 / 25 * 0.8 <= elapsed < 5 / 25 + 3.0  # waits between frames (the upper bound only catches a hang)


def test_virtual_camera_device_is_passed_through(recorder):
    sink = open_sink("vcam:/dev/video42", SinkConfig(width=32, height=32, backend=RECORDER))
    assert sink.device == "/dev/video42" and recorder.opened_with["device"] == "/dev/video42"
    sink.close()


def test_every_backend_tried_is_reported_on_one_line_with_the_fix():
    class UnpluggedBackend:
        def __init__(self, **kw):
            raise RuntimeError("device unplugged")

    pyvirtualcam.register_backend("vcam-test-unplugged", UnpluggedBackend)
    try:
        real_backends = [name for name in pyvirtualcam.camera.BACKENDS if name != "vcam-test-unplugged"]
        with pytest.raises(SinkError) as error:
            open_sink("vcam:/dev/no-such-device", SinkConfig(width=32, height=32))
    finally:
        del pyvirtualcam.camera.BACKENDS["vcam-test-unplugged"]
    message = str(error.value)
    assert "\n" not in message
    assert "'vcam-test-unplugged' backend: device unplugged" in message
    assert all(f"'{name}' backend" in message for name in real_backends)
    assert ("modprobe v4l2loopback" if platform.system() == "Linux" else "OBS") in message


@pytest.mark.skipif(platform.system() != "Linux", reason="v4l2loopback is the Linux backend")
def test_missing_v4l2loopback_device_says_how_to_create_it():
    try:
        open_sink("vcam", SinkConfig(width=64, height=48, backend="v4l2loopback")).close()
    except SinkError as error:
        assert "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=vcam" in str(error)
        assert "setup-v4l2loopback.sh" in str(error) and "\n" not in str(error)
    else:
        pytest.skip("this machine has a v4l2loopback device")


def test_unknown_backend_lists_the_ones_this_platform_has():
    with pytest.raises(SinkError, match="unknown virtual camera backend 'nope'; this platform has"):
        open_sink("vcam", SinkConfig(backend="nope"))


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mkv"])
def test_video_file_sink_writes_a_playable_file_with_every_frame_in_order(tmp_path: Path, suffix):
    colours = distinct_colours(5)
    path = tmp_path / f"out{suffix}"
    sink = open_sink(str(path), SinkConfig(width=96, height=64, fps=12))
    assert sink.fps is None, "a file gets every frame once, not paced"
    for colour in colours:
        sink.write(coloured_frame(colour, 200, 100))
    sink.close()
    frames = read_video(path)
    assert len(frames) == 5
    assert frames[0].shape == (64, 96, 3)
    assert all(close_colour(frame, colour) for frame, colour in zip(frames, colours))
    capture = cv2.VideoCapture(str(path))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12, abs=0.01), "the container carries the configured fps"
    capture.release()


def test_video_file_sink_closed_by_another_thread_mid_stream_holds_every_frame_it_counted(tmp_path: Path):
    # A stop closes the sink under the output thread: the file must be finalised and playable, holding exactly the
    # frames counted as written; frames arriving after the close are dropped, not written into a released writer.
    path = tmp_path / "out.mp4"
    sink = open_sink(str(path), SinkConfig(width=96, height=64, fps=12))
    closed = threading.Event()

    def keep_writing() -> None:
        for index in range(10_000):
            if closed.is_set() and index % 50 == 0:
                return
            sink.write(coloured_frame(distinct_colours(index + 1)[-1], 96, 64))

    writer = threading.Thread(target=keep_writing)
    writer.start()
    while sink.frames_written < 10:
        time.sleep(0.01)
    sink.close()
    closed.set()
    writer.join(timeout=30)
    sink.close()  # a second close is harmless
    assert len(read_video(path)) == sink.frames_written >= 10


def test_video_file_sink_refuses_unknown_formats_and_missing_folders(tmp_path: Path):
    with pytest.raises(SinkError, match=r"cannot write '.gif' files; use .mp4, .avi or .mkv"):
        open_sink(str(tmp_path / "out.gif"))
    with pytest.raises(SinkError, match="does not exist"):
        open_sink(str(tmp_path / "missing" / "out.mp4"))


def test_null_sink_discards_but_counts():
    sink = open_sink("null")
    for _ in range(3):
        sink.write(noisy_frame(16, 16))
    sink.close()
    assert sink.fps is None and sink.frames_written == 3


@pytest.mark.parametrize("spec,message", [("speaker", "unknown sink 'speaker'"), ("mjpeg:http", "mjpeg port"),
                                          ("window", "needs the Qt host")])
def test_bad_sink_specs_give_one_line_errors_naming_the_fix(spec, message):
    with pytest.raises(SinkError) as error:
        open_sink(spec)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_output_settings_are_refused():
    with pytest.raises(SinkError, match="crop' or 'letterbox"):
        open_sink("null", SinkConfig(fit="stretch"))  # type: ignore[arg-type]
    with pytest.raises(SinkError, match="positive"):
        open_sink("null", SinkConfig(width=0))


# --- MJPEG over HTTP -------------------------------------------------------------------------------------------

def read_multipart_frames(response, count: int) -> list[np.ndarray]:
    """Parse `count` parts of a multipart/x-mixed-replace JPEG stream the way a strict client would."""
    frames = []
    for _ in range(count):
        assert response.readline() == b"--vcamframe\r\n"
        headers = {}
        while (line := response.readline()) != b"\r\n":
            name, _, value = line.decode("ascii").partition(":")
            headers[name.strip().lower()] = value.strip()
        assert headers["content-type"] == "image/jpeg"
        body = response.read(int(headers["content-length"]))
        assert response.read(2) == b"\r\n"
        image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None, "every part is a decodable JPEG"
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return frames


class Publisher:
    """Writes frames to a sink on its own thread, like the pipeline's output thread, and times each write."""

    def __init__(self, sink, frame_for_index, interval: float) -> None:
        self.write_seconds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sink, frame_for_index, interval), daemon=True)
        self._thread.start()

    def _run(self, sink, frame_for_index, interval) -> None:
        index = 0
        while not self._stop.is_set():
            start = time.perf_counter()
            sink.write(frame_for_index(index))
            self.write_seconds.append(time.perf_counter() - start)
            index += 1
            time.sleep(interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def mjpeg_sink():
    sink = open_sink("mjpeg:0", SinkConfig(width=96, height=64, fps=50))
    yield sink
    sink.close()


def test_mjpeg_snapshot_is_the_newest_frame_at_the_configured_size(mjpeg_sink):
    mjpeg_sink.write(coloured_frame((30, 200, 30), 300, 200))
    with urllib.request.urlopen(f"http://127.0.0.1:{mjpeg_sink.port}/frame.jpg", timeout=5) as response:
        assert response.headers["Content-Type"] == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (64, 96, 3)
    assert close_colour(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (30, 200, 30))


def test_mjpeg_stream_is_a_correct_multipart_stream_following_the_frames(mjpeg_sink):
    colours = distinct_colours(3)
    mjpeg_sink.write(coloured_frame(colours[0], 96, 64))
    with urllib.request.urlopen(mjpeg_sink.url, timeout=5) as response:
        assert response.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=vcamframe"
        first = read_multipart_frames(response, 1)[0]
        assert close_colour(first, colours[0])
        publisher = Publisher(mjpeg_sink, lambda i: coloured_frame(colours[1 + (i // 5) % 2], 96, 64), 0.01)
        later = read_multipart_frames(response, 8)
        publisher.stop()
    seen = {tuple(np.round(f[32:, 48:].reshape(-1, 3).mean(axis=0) / 50).astype(int)) for f in later}
    assert len(seen) >= 2, "the stream shows new frames as they are written"


def test_mjpeg_stream_is_paced_at_the_configured_fps(mjpeg_sink):
    publisher = Publisher(mjpeg_sink, lambda i: coloured_frame(distinct_colours(8)[i % 8], 96, 64), 0.002)
    with urllib.request.urlopen(mjpeg_sink.url, timeout=5) as response:
        read_multipart_frames(response, 1)
        start = time.perf_counter()
        read_multipart_frames(response, 10)
        elapsed = time.perf_counter() - start
    publisher.stop()
    assert elapsed >= 10 / 50 * 0.85, "a client never gets more than fps frames per second"


def test_a_paced_repeat_of_the_last_frame_is_streamed_again_without_encoding_it_again(mjpeg_sink, monkeypatch):
    # While the model is slower than the output, the pipeline writes the same frame again at every tick: fitting
    # and JPEG-encoding it each time would take CPU from the model for a picture the viewers already have.
    encodes = []
    real_imencode = cv2.imencode
    monkeypatch.setattr(cv2, "imencode", lambda *args: encodes.append(1) or real_imencode(*args))
    frame = coloured_frame((30, 200, 30), 300, 200)
    with urllib.request.urlopen(mjpeg_sink.url, timeout=5) as response:
        mjpeg_sink.write(frame)
        first = read_multipart_frames(response, 1)[0]
        for _ in range(5):
            mjpeg_sink.write(frame)
            [again] = read_multipart_frames(response, 1)
            assert np.array_equal(again, first)
        mjpeg_sink.write(frame.copy())  # a new frame (even with the same pixels) is encoded
        read_multipart_frames(response, 1)
    assert len(encodes) == 2


def test_slow_mjpeg_client_never_blocks_the_pipeline_or_other_clients():
    sink = open_sink("mjpeg:0", SinkConfig(width=320, height=240, fps=100, jpeg_quality=95))
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", sink.port))
    stalled.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")  # ... and never reads a byte
    publisher = Publisher(sink, lambda i: noisy_frame(320, 240, i % 4), 0.005)  # ~60 KB per JPEG
    try:
        time.sleep(0.5)  # long enough for the stalled client's socket buffers to fill
        with urllib.request.urlopen(sink.url, timeout=5) as response:
            frames = read_multipart_frames(response, 5)
        assert all(f.shape == (240, 320, 3) for f in frames)
    finally:
        publisher.stop()
        stalled.close()
        sink.close()
    assert len(publisher.write_seconds) > 20
    assert max(publisher.write_seconds) < 5.0, "write() only swaps in the newest frame (a blocked one waits 10 s)"


def test_mjpeg_serves_any_number_of_clients(mjpeg_sink):
    mjpeg_sink.write(coloured_frame((200, 200, 30), 96, 64))
    responses = [urllib.request.urlopen(mjpeg_sink.url, timeout=5) for _ in range(3)]
    try:
        for response in responses:
            assert close_colour(read_multipart_frames(response, 1)[0], (200, 200, 30))
    finally:
        for response in responses:
            response.close()


def test_mjpeg_unknown_path_is_404_and_index_page_embeds_the_stream(mjpeg_sink):
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"http://127.0.0.1:{mjpeg_sink.port}/nothing", timeout=5)
    assert error.value.code == 404
    with urllib.request.urlopen(f"http://127.0.0.1:{mjpeg_sink.port}/", timeout=5) as response:
        assert b"/stream.mjpg" in response.read()


def test_mjpeg_port_in_use_is_a_one_line_error_naming_another_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SinkError) as error:
            open_sink(f"mjpeg:{port}")
    assert f"127.0.0.1:{port}" in str(error.value) and f"mjpeg:{port + 1}" in str(error.value)
    assert "\n" not in str(error.value)


def test_mjpeg_close_ends_open_streams_and_frees_the_port():
    sink = open_sink("mjpeg:0", SinkConfig(width=32, height=32, fps=30))
    sink.write(noisy_frame(32, 32))
    response = urllib.request.urlopen(sink.url, timeout=5)
    read_multipart_frames(response, 1)
    start = time.perf_counter()
    sink.close()
    assert time.perf_counter() - start < 4  # the 5 s read timeout is not waited for
    response.read()  # the server ends the stream: this returns instead of hanging until the timeout
    response.close()
    open_sink(f"mjpeg:{sink.port}", SinkConfig(width=32, height=32)).close()


def test_detect_sinks_says_which_outputs_can_work_here_in_one_line_each(monkeypatch):
    from vcam.qt_host import QtHost

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", 8090))  # make the default MJPEG port busy (if nobody else already does)
            holder.listen()
        except OSError:
            pass
        lines = detect_sinks(SinkConfig(width=64, height=48))
    assert [line[2:].split(":")[0] for line in lines] == ["vcam", "window", "mjpeg"]
    assert all(line[0] in "+-" and "\n" not in line for line in lines)
    assert lines[1].startswith("+ window" if QtHost.available() else "- window: no display")
    assert lines[2] == "- mjpeg: port 8090 is in use; use mjpeg:PORT with a free port"
    if not lines[0].startswith("+"):
        assert virtual_camera_fix() in lines[0]


# --- preview window -------------------------------------------------------------------------------------------

@pytest.fixture
def qt_host(monkeypatch):
    """The real QtHost on Qt's offscreen platform: real widgets and pixmaps, no display server needed."""
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    from vcam.qt_host import QtHost

    host = QtHost()
    yield host
    host.close()


def test_window_shows_the_newest_frame_written_from_another_thread(qt_host):
    sink = open_sink("window", SinkConfig(width=96, height=64, fps=30), host=qt_host)
    assert sink.fps == 30
    colours = distinct_colours(6)
    writer = threading.Thread(target=lambda: [sink.write(coloured_frame(c, 192, 128)) for c in colours])
    writer.start()
    writer.join()
    qt_host.run_for(0.2)
    shown = sink.shown_image()
    assert shown is not None and shown.shape == (64, 96, 3), "fitted to the configured size"
    assert np.abs(shown.astype(int) - fit_frame(coloured_frame(colours[-1], 192, 128), 96, 64).astype(int)).max() <= 1
    assert 1 <= sink.frames_shown <= len(colours), "a busy GUI skips to the newest frame instead of queueing"
    sink.close()
    qt_host.run_for(0.05)
    assert sink.shown_image() is None, "closing removes the window"


def test_window_status_overlay_is_drawn_on_the_frames_that_follow(qt_host):
    sink = open_sink("window", SinkConfig(width=128, height=96, fps=30), host=qt_host)
    frame = coloured_frame((240, 240, 240), 128, 96)
    sink.write(frame)
    qt_host.run_for(0.1)
    plain = sink.shown_image()
    sink.set_status(["14.8 fps", "skip 20%", "prompt: anime"])
    sink.write(frame)
    qt_host.run_for(0.1)
    with_status = sink.shown_image()
    sink.write(with_notices(frame, ["camera lost"]))
    qt_host.run_for(0.1)
    with_notice_too = sink.shown_image()
    sink.close()
    qt_host.run_for(0.05)
    assert np.array_equal(plain, frame)
    assert with_status[:30, :50].mean() < plain[:30, :50].mean() - 50, "text box in the top-left corner"
    assert np.array_equal(with_status[60:, 80:], plain[60:, 80:])
    below_status = (slice(40, 48), slice(0, 30))  # under the three status lines' box
    assert with_notice_too[below_status].mean() < with_status[below_status].mean() - 50, "one box, a line longer"


# --- with the real frame pipeline ------------------------------------------------------------------------------

def test_file_source_through_the_pipeline_to_a_file_sink_keeps_every_frame_in_order(tmp_path: Path):
    from core.pipeline import FramePipeline
    from tests.media import write_video
    from vcam.processor import PassThroughProcessor
    from vcam.sources import SourceConfig, open_source

    colours = distinct_colours(6)
    clip = write_video(tmp_path / "in.avi", [coloured_frame(c, 160, 120) for c in colours])
    source = open_source(str(clip), SourceConfig(loop=False))
    sink = open_sink(str(tmp_path / "out.avi"), SinkConfig(width=64, height=64, fps=10))
    with FramePipeline(source, PassThroughProcessor(notice=None), sink) as pipeline:
        assert pipeline.wait(timeout=20)
    assert pipeline.error is None
    frames = read_video(tmp_path / "out.avi")
    assert len(frames) == len(colours)
    assert all(f.shape == (64, 64, 3) and close_colour(f, c) for f, c in zip(frames, colours))


def http_get(port: int, path: str, host: str | None) -> tuple[int, bytes]:
    """A real HTTP request with a chosen `Host:` header (None: no header at all), as a rebinding page would send."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.putrequest("GET", path, skip_host=True)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read(200)
    finally:
        connection.close()


@pytest.mark.parametrize("host", ["evil.example", "attacker.com:8090", "192.168.1.20", "127.0.0.1.nip.io",
                                  "[2001:db8::1]:80", "localhost.evil.example"])
def test_mjpeg_refuses_a_foreign_host_header_with_403_and_one_log_line(mjpeg_sink, host, caplog):
    mjpeg_sink.write(coloured_frame((30, 200, 30), 96, 64))
    with caplog.at_level("DEBUG", logger="vcam.mjpeg"):
        for path in ("/frame.jpg", "/stream.mjpg", "/"):
            status, body = http_get(mjpeg_sink.port, path, host)
            assert status == 403 and not body.startswith(b"\xff\xd8"), "no picture reaches a foreign page"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "refused" in warnings[0].getMessage(), caplog.text


@pytest.mark.parametrize("host", [None, "localhost", "LOCALHOST:8090", "127.0.0.1", "127.0.0.1:{port}",
                                  "127.3.4.5", "[::1]", "[::1]:{port}", "vcam.localhost"])
def test_mjpeg_serves_loopback_host_names_and_addresses(mjpeg_sink, host):
    mjpeg_sink.write(coloured_frame((30, 200, 30), 96, 64))
    status, body = http_get(mjpeg_sink.port, "/frame.jpg", host and host.format(port=mjpeg_sink.port))
    assert status == 200 and body.startswith(b"\xff\xd8")


def reset_connection(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends a TCP RST, as a crashed or killed viewer's machine does."""
    import struct

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_mjpeg_viewers_that_reset_mid_stream_leave_stderr_clean(capfd):
    sink = open_sink("mjpeg:0", SinkConfig(width=160, height=120, fps=100))
    publisher = Publisher(sink, lambda i: noisy_frame(160, 120, i % 4), 0.005)
    try:
        for request in [b"GET /stream.mjpg HTTP/1.0\r\n\r\n", b"GET /frame.jpg HTTP/1.0\r\n\r\n",
                        b"GET /stream.mjpg HT"] * 4:
            viewer = socket.create_connection(("127.0.0.1", sink.port), timeout=30)
            viewer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            viewer.sendall(request)
            if request.endswith(b"\r\n\r\n"):
                assert viewer.recv(64).startswith(b"HTTP/1.0 200"), "the viewer was being served"
            reset_connection(viewer)
        with urllib.request.urlopen(sink.url, timeout=30) as response:
            read_multipart_frames(response, 3)  # the server still serves the next viewer
    finally:
        publisher.stop()
        sink.close()
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "Error" not in captured.err, captured.err


@pytest.mark.parametrize("fit", ["crop", "letterbox"])
@pytest.mark.parametrize("width, height", [(640, 480), (480, 640), (1920, 1080)])
def test_the_loading_notice_shows_on_the_output_whatever_the_source_shape_and_fit(tmp_path: Path, fit: str,
                                                                                 width: int, height: int) -> None:
    """Drawn after the picture is fitted: a 4:3 camera cropped to 16:9 loses its top rows, never the notice."""
    from vcam.processor import PassThroughProcessor

    def shown(notice: str | None) -> np.ndarray:
        camera = np.full((height, width, 3), (40, 160, 40), dtype=np.uint8)
        out = tmp_path / f"{notice is None}.mp4"
        sink = open_sink(str(out), SinkConfig(width=1280, height=720, fit=fit, mirror=True))
        sink.write(PassThroughProcessor(notice=notice).process([camera])[0])
        sink.close()
        return read_video(out)[0]

    corner = shown("loading model...")[:60, :420]  # the output's top-left corner, mirrored output included
    white_text = (corner.min(axis=2) > 200).sum()
    assert white_text > 100, "the notice is on the output"
    assert (shown(None)[:60, :420].min(axis=2) > 200).sum() == 0  # and only the notice makes those pixels


@pytest.mark.parametrize("fit", ["crop", "letterbox"])
@pytest.mark.parametrize("width, height", [(1280, 720), (720, 1280), (256, 256)])
def test_a_lost_4_3_camera_shows_its_notice_on_the_output_for_every_shape_and_fit(tmp_path: Path, fit: str,
                                                                                 width: int, height: int) -> None:
    """The real chain: a 640x480 capture that stops delivering (its clip ends) -> the reconnecting source -> the
    output. The notice is drawn after fitting: a 16:9 crop cuts the camera's top rows, never the notice."""
    from vcam.camera_source import open_video_capture
    from vcam.reconnecting_source import ReconnectingSource, RetryPolicy

    clip, _ = photo_camera_clip(tmp_path / "camera.avi")
    camera = ReconnectingSource(lambda: open_video_capture(str(clip)), fps=100, retry=RetryPolicy(first_delay=60))
    frames = [camera.read() for _ in range(4)]  # three pictures, then the capture is dry: the camera is lost
    camera.close()
    assert camera.lost

    def shown(frame: np.ndarray, name: str) -> np.ndarray:
        out = tmp_path / f"{name}.avi"
        sink = open_sink(str(out), SinkConfig(width=width, height=height, fit=fit))
        sink.write(frame)
        sink.close()
        return read_video(out)[0]

    assert notice_pixels(shown(frames[3], "lost"), shown(frames[2], "live")) >= 25, "the notice is on the output"


def test_a_camera_lost_while_the_model_loads_shows_both_notices(tmp_path: Path) -> None:
    from vcam.camera_source import open_video_capture
    from vcam.overlay import notices_of
    from vcam.processor import PassThroughProcessor
    from vcam.reconnecting_source import CAMERA_LOST_NOTICE, ReconnectingSource, RetryPolicy

    clip, _ = photo_camera_clip(tmp_path / "camera.avi")
    camera = ReconnectingSource(lambda: open_video_capture(str(clip)), fps=100, retry=RetryPolicy(first_delay=60))
    lost = [camera.read() for _ in range(4)][-1]
    camera.close()
    card = PassThroughProcessor().process([lost])[0]
    assert notices_of(card) == (*CAMERA_LOST_NOTICE, "loading model...")

