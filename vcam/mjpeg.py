"""An MJPEG-over-HTTP server on 127.0.0.1: the stream for OBS's Media Source, browsers, and machines with neither
a virtual camera nor a display.

`GET /stream.mjpg` is a multipart/x-mixed-replace stream, `GET /frame.jpg` one snapshot, `GET /` a page that
shows the stream. `publish()` only swaps in the newest frame, so the pipeline never waits on the network. Each
client has its own thread that sends the newest frame at most `fps` times a second and simply skips what it was
too slow to send: a slow client never holds up the pipeline or the other clients. Frames are JPEG-encoded
lazily, once per frame, and only while someone is watching.

Strangers: the server listens on 127.0.0.1 only, and it also refuses any request whose `Host:` header is not a
loopback name or address (localhost, 127.0.0.0/8, [::1]): otherwise a web page could read the camera through DNS
rebinding (its own domain re-pointed at 127.0.0.1, so the browser's same-origin check passes). A viewer that leaves
(closes or resets its connection) is ordinary, never an error: it is logged at debug level only.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from core.pacing import FramePacer

BOUNDARY = "vcamframe"
KEEPALIVE_SECONDS = 1.0  # resend the last frame this often when nothing new came, so players do not time out
CLIENT_SOCKET_TIMEOUT = 10.0  # a client that accepts nothing for this long is dropped
INDEX_PAGE = (b"<!doctype html><title>vcam</title><body style='margin:0;background:#000'>"
              b"<img src='/stream.mjpg' style='width:100%;height:100vh;object-fit:contain'></body>")


log = logging.getLogger("vcam.mjpeg")


def is_loopback_host(host_header: str | None) -> bool:
    """Whether an HTTP `Host:` value names this machine's loopback: `localhost` (and `*.localhost`, RFC 6761),
    an address in 127.0.0.0/8 or `[::1]`, with or without a port. No header (HTTP/1.0 tools) counts as loopback:
    browsers, the only way to a DNS rebinding attack, always send one."""
    if host_header is None:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):  # [v6]:port
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    host = host.rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MjpegServerError(OSError):
    """The server cannot listen; the message names the port and the fix."""


class LatestFrame:
    """The newest published frame, its sequence number and its JPEG (encoded on first request)."""

    def __init__(self, quality: int) -> None:
        self._quality = quality
        self._changed = threading.Condition()
        self._encoding = threading.Lock()
        self._frame: np.ndarray | None = None
        self._jpeg: bytes | None = None
        self._sequence = 0
        self.closed = False

    def publish(self, rgb: np.ndarray) -> None:
        """A new part for the viewers; the same array object again (a paced repeat) keeps its JPEG: no re-encoding."""
        with self._changed:
            if rgb is not self._frame:
                self._frame, self._jpeg = rgb, None
            self._sequence += 1
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def wait_newer(self, seen: int, timeout: float) -> tuple[int, bytes | None]:
        """The newest (sequence, JPEG) once there is one newer than `seen`, or the current one after `timeout`.

        The encoding runs outside the condition's lock, so `publish()` is never held up by a client encoding.
        """
        with self._changed:
            self._changed.wait_for(lambda: self._sequence > seen or self.closed, timeout=timeout)
            if self._frame is None or self.closed:
                return self._sequence, None
            frame, sequence, jpeg = self._frame, self._sequence, self._jpeg
        if jpeg is not None:
            return sequence, jpeg
        with self._encoding:  # one encoder at a time: the others then find the JPEG ready
            with self._changed:
                if self._sequence == sequence and self._jpeg is not None:
                    return sequence, self._jpeg
            ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, self._quality])
            jpeg = encoded.tobytes() if ok else None
            with self._changed:
                if self._sequence == sequence:
                    self._jpeg = jpeg
        return sequence, jpeg


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    timeout = CLIENT_SOCKET_TIMEOUT
    protocol_version = "HTTP/1.0"  # one request per connection; the stream ends when the connection does

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # a per-request log line on stderr would drown the service's own output

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        host = self.headers.get("Host")
        if not is_loopback_host(host):
            self.server.refused(host or "")
            self._reply(403, "text/plain", b"forbidden: vcam serves only http://127.0.0.1 or http://localhost\n")
            return
        path = self.path.split("?", 1)[0]
        if path == "/stream.mjpg":
            self._stream()
        elif path == "/frame.jpg":
            self._snapshot()
        elif path in ("/", "/index.html"):
            self._reply(200, "text/html; charset=utf-8", INDEX_PAGE)
        else:
            self._reply(404, "text/plain", b"not found: use /stream.mjpg, /frame.jpg or /\n")

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _snapshot(self) -> None:
        _, jpeg = self.server.latest.wait_newer(0, timeout=2.0)
        if jpeg is None:
            self._reply(503, "text/plain", b"no frame yet\n")
        else:
            self._reply(200, "image/jpeg", jpeg)

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        pacer = FramePacer(self.server.fps)  # at most fps frames a second to this client
        seen = -1
        try:
            while not self.server.latest.closed:
                pacer.wait()
                seen, jpeg = self.server.latest.wait_newer(seen, timeout=KEEPALIVE_SECONDS)
                if jpeg is None:
                    continue
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}"
                                 "\r\n\r\n".encode("ascii") + jpeg + b"\r\n")
                self.wfile.flush()
                pacer.sent()
        except (ConnectionError, TimeoutError):
            log.debug("an MJPEG viewer left or stalled")  # its thread ends, nobody else notices


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client thread must never keep the process alive
    allow_reuse_address = sys.platform != "win32"  # on Windows SO_REUSEADDR would let two servers share a port

    def __init__(self, port: int, fps: float, latest: LatestFrame) -> None:
        self.fps = fps
        self.latest = latest
        self._refused_once = False
        super().__init__(("127.0.0.1", port), _Handler)

    def refused(self, host: str) -> None:
        """One warning for the first foreign `Host:`, debug lines after: a hostile page may retry endlessly."""
        level = logging.DEBUG if self._refused_once else logging.WARNING
        self._refused_once = True
        log.log(level, "MJPEG: refused a request for Host %r (only loopback names are served; a web page trying "
                "DNS rebinding looks like this)", host[:100])

    def handle_error(self, request: object, client_address: object) -> None:
        """socketserver prints a traceback on stderr; a viewer that resets or times out is not an error."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("an MJPEG viewer left: %s", error)
        else:
            log.warning("MJPEG: a request failed: %s: %s", type(error).__name__, error)


def listen_failure(port: int, error: OSError) -> str:
    """The one line for a port the server cannot listen on: a privileged port (below 1024 on Linux and macOS,
    EACCES) needs root, which vcam never asks for; any other failure is most often another program on the port."""
    why = error.strerror or str(error)
    if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM):
        return (f"cannot serve MJPEG on 127.0.0.1:{port} ({why}): ports below 1024 are reserved for the system "
                "administrator; use a port from 1024 up, e.g. mjpeg:8090")
    return (f"cannot serve MJPEG on 127.0.0.1:{port} ({why}); another program uses that port: pick another one, "
            f"e.g. mjpeg:{port + 1 if port else 8091}")


class MjpegServer:
    """Serves the newest published frame to any number of HTTP clients from a background thread."""

    def __init__(self, port: int, fps: float, quality: int = 80) -> None:
        self.latest = LatestFrame(quality)
        try:
            self._server = _Server(port, fps, self.latest)
        except OSError as error:
            raise MjpegServerError(listen_failure(port, error)) from None
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"mjpeg-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def publish(self, rgb: np.ndarray) -> None:
        """Make `rgb` (H, W, 3) uint8 the frame every client gets next; never blocks on clients."""
        self.latest.publish(rgb)

    def close(self) -> None:
        self.latest.close()  # wakes the client threads so they end their streams
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)
