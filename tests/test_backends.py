"""Specification of the registries tried in order (`vcam.backends.open_first`) and of the source and sink chains
built on them: the first that opens wins, the errors of those tried before it are kept, and when none opens their
errors are joined into one line."""
from __future__ import annotations

import socket

import pytest
import pyvirtualcam

from tests.test_sinks import qt_host  # noqa: F401 - the real Qt host on the offscreen platform
from vcam.backends import open_first
from vcam.sinks import AUTO_SINKS, SinkConfig, SinkError, open_first_sink
from vcam.sources import SourceConfig, SourceError, open_first_source


class Refused(Exception):
    """A candidate that cannot open (the kind of error the chain moves past)."""


def refusing(message: str):
    def open_it():
        raise Refused(message)

    return open_it


def test_the_first_candidate_that_opens_wins_and_the_earlier_errors_are_kept():
    tried = []

    def opens(name):
        def open_it():
            tried.append(name)
            return name.upper()

        return open_it

    name, opened, errors = open_first([("a", refusing("no a")), ("b", opens("b")), ("c", opens("c"))], Refused, "")
    assert (name, opened) == ("b", "B")
    assert errors == ["a: no a"]
    assert tried == ["b"], "candidates after the one that opened are never tried"


def test_when_none_opens_every_error_is_joined_on_one_line_in_order():
    with pytest.raises(Refused) as error:
        open_first([("a", refusing("no a")), ("b", refusing("no b"))], Refused, "nothing opened: ")
    assert str(error.value) == "nothing opened: a: no a; b: no b"


def test_a_single_candidates_error_is_raised_as_it_is():
    with pytest.raises(Refused) as error:
        open_first([("a", refusing("no a, try b"))], Refused, "nothing opened: ")
    assert str(error.value) == "no a, try b"


def test_a_programming_error_is_not_a_reason_to_try_the_next_candidate():
    def broken():
        raise TypeError("a bug")

    tried = []
    with pytest.raises(TypeError, match="a bug"):
        open_first([("a", broken), ("b", lambda: tried.append("b"))], Refused, "")
    assert tried == []


def test_a_source_that_cannot_open_falls_back_to_the_next_with_its_error_named():
    config = SourceConfig(width=32, height=24)
    spec, source, errors = open_first_source([("/no/such/clip.mp4", config), ("synthetic", config)])
    try:
        assert spec == "synthetic" and source.read().shape == (24, 32, 3)
        assert errors == ["/no/such/clip.mp4: source file not found: /no/such/clip.mp4 (check the path, or use "
                          "camera:0 or synthetic)"]
    finally:
        source.close()


def test_no_source_opening_is_one_line_naming_each():
    with pytest.raises(SourceError) as error:
        open_first_source([("/no/such/clip.mp4", SourceConfig()), ("synthetic:plaid", SourceConfig())])
    message = str(error.value)
    assert message.startswith("no source could open: /no/such/clip.mp4: source file not found")
    assert "; synthetic:plaid: unknown synthetic pattern" in message and "\n" not in message


@pytest.fixture
def unplugged_backend():
    class UnpluggedBackend:
        def __init__(self, **kw):
            raise RuntimeError("device unplugged")

    pyvirtualcam.register_backend("vcam-test-unplugged", UnpluggedBackend)
    yield "vcam-test-unplugged"
    del pyvirtualcam.camera.BACKENDS["vcam-test-unplugged"]  # pyvirtualcam has no unregister


@pytest.fixture
def mjpeg_port_taken():
    """The default MJPEG port held by this test (or by someone else already: either way it cannot open)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        try:
            holder.bind(("127.0.0.1", 8090))
            holder.listen(1)
        except OSError:
            pass
        yield


def test_auto_output_tries_camera_window_and_mjpeg_in_order_and_joins_their_errors(unplugged_backend,
                                                                                    mjpeg_port_taken):
    asked = []

    def no_display():
        asked.append("window host")
        return None

    with pytest.raises(SinkError) as error:
        open_first_sink("auto", SinkConfig(width=32, height=32, backend=unplugged_backend), no_display)
    message = str(error.value)
    assert AUTO_SINKS == ("vcam", "window", "mjpeg")
    assert message.startswith("no output could open: vcam: no virtual camera (")
    assert "device unplugged" in message and "\n" not in message
    positions = [message.index(f"; {name}: ") for name in ("window", "mjpeg")]
    assert positions == sorted(positions) and "; window: no display; mjpeg: " in message
    assert asked == ["window host"], "the Qt host is asked for only when the window is tried"


def test_auto_output_takes_the_first_that_opens_and_says_what_it_skipped(unplugged_backend, qt_host):
    from vcam.window_sink import WindowSink

    name, sink, errors = open_first_sink("auto", SinkConfig(width=32, height=32, backend=unplugged_backend),
                                         lambda: qt_host)
    try:
        assert name == "window" and isinstance(sink, WindowSink)
        assert len(errors) == 1 and errors[0].startswith("vcam: no virtual camera (")
        assert "device unplugged" in errors[0]
    finally:
        sink.close()
        qt_host.run_for(0.05)


def test_a_named_window_without_a_display_says_which_outputs_work_instead():
    with pytest.raises(SinkError, match="the preview window needs a display; use --sink vcam, --sink mjpeg"):
        open_first_sink("window", SinkConfig(), lambda: None)
