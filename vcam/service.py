"""The running product: camera in, stylised virtual camera out, controls applied between frames.

Order of start-up is chosen so that a meeting app never sees a dead camera:
1. the model is checked (a missing model is one line, before any camera or device is opened);
2. the source and the sink open, and the pipeline starts at once with a pass-through "loading" processor;
3. the engine loads (or builds) on a background thread, the prompts are encoded ahead, and the diffusion
   processor is swapped in at a frame boundary;
4. controls (hotkeys, tray, OBS, OSC) put commands on one queue; a dispatcher thread encodes new prompt texts off
   the inference thread and hands everything else to the pipeline's between-frames hook.
Stopping (SIGINT, SIGTERM, SIGHUP, Windows console events, the quit command, the tray's Quit) always goes the
same way: the camera and the virtual camera are released within 2 seconds and any file is finalised; then the
model's call in flight gets a few seconds to return. The process must not exit while a thread is inside torch
(it aborts with "terminate called without an active exception", status 134), and a call at a large resolution can
take far longer than a stop may: when the CLI owns the process, a call still running then is abandoned by ending
the process at once, after everything was written and the logs flushed, with the run's own exit status.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable

from core.frame_io import FrameSink, FrameSource
from core.pipeline import FramePipeline, PipelineConfig
from vcam.commands import CommandQueue
from vcam.fallbacks import is_offline_sink
from vcam.logs import log_traceback, setup_logging, terminal_handler
from vcam.processor import DiffusionProcessor, PassThroughProcessor
from vcam.service_commands import ServiceCommands
from vcam.service_model import ServiceModel
from vcam.settings import RunSettings
from vcam.sink_wrappers import OverlaySink, TeeSink
from vcam.sinks import SinkConfig, SinkError, open_first_sink, open_sink
from vcam.status_line import RunState, status_line
from vcam.sources import open_first_source
from vcam.stop_signals import StopSignals

log = logging.getLogger("vcam")

RELEASE_SECONDS = 2.0  # stop request -> camera and virtual camera released, files finalised
MESSAGES_KEPT = 200  # the newest notices kept in `Service.messages`; the log file has them all
MODEL_THREADS = ("vcam-model", "vcam-commands")  # threads that call the model (load / warm-up, prompt encoding)


@dataclass(frozen=True)
class ServiceOptions:
    tray: bool = True
    hotkeys: bool = True
    overlay: bool = False
    status_line: bool = True
    # True when this run is the whole process (the CLI): a model call still running after the shutdown is then
    # abandoned by ending the process (see the module docstring). An embedding application keeps its process.
    owns_process: bool = False


class Service(ServiceCommands, ServiceModel):
    """One run of vcam. `run()` blocks until quit, the frame limit, or the end of a non-looping source.

    Its concerns live in three files: the lifecycle here, command handling in `vcam.service_commands`, the
    model's loading and the wait for its calls in `vcam.service_model`."""

    def __init__(
        self,
        settings: RunSettings,
        options: ServiceOptions,
        queue: CommandQueue | None = None,
        source=None,
        sink=None,
    ) -> None:
        """`source` / `sink`: already-open objects to use instead of the ones the settings name (embedding, tests)."""
        self._given_source = source
        self._given_sink = sink
        self.settings = settings
        self.options = options
        self.queue = queue or CommandQueue()
        self.stop_event = threading.Event()
        self.finalised = threading.Event()  # the devices are released and the files written
        self._hurry = threading.Event()  # a second stop request: do not wait for the model's call in flight
        self._stop_reason: str | None = None
        self._stop_into_model_call: float | None = None  # seconds the model call in flight had run at the stop
        self.ready_event = threading.Event()  # the diffusion processor is live
        self.result_written = threading.Event()  # the output is writing its first frame the model made
        self.prompt_index = 0
        self.prompt_label = settings.prompts[0].name if settings.prompts else "custom"
        # The newest one-line notices (for tests and embedding applications): bounded, as a long run with a flaky
        # control may say thousands of lines; every one is in the log as well.
        self.messages: deque[str] = deque(maxlen=MESSAGES_KEPT)
        self._pending: list[Callable[[], None]] = []
        self._pending_lock = threading.Lock()
        self._controls: list = []
        self._qt_host = None
        self.processor: DiffusionProcessor | None = None
        self.stream = None
        self.pipeline: FramePipeline | None = None
        self.error: BaseException | None = None
        self._tee: TeeSink | None = None
        self._model_threads: list[threading.Thread] = []
        self._file_sink = None  # a video file being written, for the closing line

    # ----------------------------------------------------------------------------------------------- notices
    def notice(self, line: str) -> None:
        """A one-line message for the user: stderr and the log file."""
        self.messages.append(line)
        log.info(line)

    # ----------------------------------------------------------------------------------------------- set-up
    def _open_source(self) -> FrameSource:
        """The asked-for source; when it was not asked for on the command line and cannot open, the sample photo."""
        config = self.settings.source_config
        if config.live is None and not is_offline_sink(self.settings.sink):
            # Feeding a live output, a file or pattern stands in for a camera: paced at its own rate, looped.
            config = replace(config, live=True)
        candidates = [(self.settings.source, config)]
        if not self.settings.source_given:
            candidates.append(("sample", replace(self.settings.source_config, live=True)))
        spec, source, errors = open_first_source(candidates)
        if errors:
            self.notice("; ".join(errors) + " -- using the sample photo (a moving real photograph) instead")
        self.notice(f"source: {spec}")
        return source

    def _open_sink(self) -> FrameSink:
        """The asked-for sink, or for `auto` the first of the virtual camera, a window and MJPEG that opens."""
        name, sink, errors = open_first_sink(self.settings.sink, self.settings.sink_config, self._window_host)
        if errors:
            self.notice("output: " + "; ".join(errors) + f" -- using {name}")
        url = getattr(sink, "url", None)  # a network output: the address to open (mjpeg:0 shows its real port)
        self.notice(f"output: {name}" + (f" at {url}" if url else ""))
        return sink

    def _window_host(self):
        """The Qt host for a window, or None where no window can show."""
        from vcam.qt_host import QtHost

        return self.ensure_qt_host() if QtHost.available() else None

    def ensure_qt_host(self):
        if self._qt_host is None:
            from vcam.qt_host import QtHost

            self._qt_host = QtHost()
        return self._qt_host

    # ----------------------------------------------------------------------------------------------- controls
    def _start_controls(self) -> None:
        preset = self.settings.preset
        from vcam.controls.factory import start_controls

        self._controls = start_controls(self, preset, self.options)

    def _stop_controls(self, timeout: float = 2.0) -> None:
        """Stop every control at once, waiting at most `timeout` in all: a control stuck in a library call (an
        X connection, a WebSocket handshake) must not hold up the exit; its thread is a daemon."""

        def stop(control) -> None:
            try:
                control.stop()
            except Exception as error:  # noqa: BLE001
                log.debug("control stop failed: %s", error)

        stoppers = [threading.Thread(target=stop, args=(c,), name="vcam-stop-control", daemon=True)
                    for c in self._controls]
        for thread in stoppers:
            thread.start()
        deadline = time.monotonic() + timeout
        for thread in stoppers:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    # ----------------------------------------------------------------------------------------------- status
    def status_text(self) -> str:
        if self.pipeline is None:
            return "starting"
        skip = self.stream.similarity.skip_rate if self.stream is not None and self.stream.similarity else 0.0
        # "live" from the first stylised frame the output received (the model being built is not yet live)
        state: RunState = "paused" if self.paused else ("live" if self.result_written.is_set() else "loading")
        return status_line(self.pipeline.stats(), skip, self.prompt_label, state)

    def _status_loop(self) -> None:
        terminal = terminal_handler() if sys.stderr.isatty() and self.options.status_line else None
        last_logged = 0.0
        while not self.stop_event.wait(1.0):
            text = self.status_text()
            if terminal is not None:
                terminal.show_status(text)  # notices are printed above it, never glued onto it
            elif time.monotonic() - last_logged > 10:
                # Not a terminal (a service, a pipe): a status line every 10 s; with --quiet in the log file only.
                log.log(logging.INFO if self.options.status_line else logging.DEBUG, text)
                last_logged = time.monotonic()
        if terminal is not None:
            terminal.end_status()

    # ----------------------------------------------------------------------------------------------- lifecycle
    def request_stop(self, reason: str) -> None:
        """Ask the run to stop (any thread, or a signal handler: only sets flags). A second request while stopping
        means "do not wait for the model's call in flight"; the release and the files' finalisation still happen."""
        if self.stop_event.is_set():
            self._hurry.set()
        elif self._stop_reason is None:
            self._stop_reason = reason
            self._stop_into_model_call = self._seconds_into_model_call()
        self.stop_event.set()
        if self._qt_host is not None:
            self._qt_host.quit()

    def _seconds_into_model_call(self) -> float | None:
        """How long the inference thread has been inside the model (None: between calls, loading, or paused)."""
        pipeline, processor = self.pipeline, self.processor
        if pipeline is None or processor is None or processor.paused or pipeline.processor is not processor:
            return None
        return pipeline.seconds_into_call()

    def _watch_pipeline(self) -> None:
        while not self.stop_event.is_set():
            if self.pipeline is not None and self.pipeline.wait(timeout=0.2):
                self.stop_event.set()

    def run(self) -> int:
        signals = StopSignals(self.request_stop, self.finalised)
        signals.install()
        try:
            try:
                status = self._run()
            finally:
                self.finalised.set()
            left = self._wait_for_model_calls()
        finally:
            if not self.options.owns_process:  # the CLI keeps them to the end: a late signal only sets flags
                signals.restore()
        if left:
            self._abandon(left, status)
        return status

    def _run(self) -> int:
        setup_logging()
        self._settle_model()
        source = self._given_source or self._open_source()
        try:
            sink = self._given_sink or self._open_sink()
        except BaseException:
            source.close()
            raise
        self._file_sink = sink if hasattr(sink, "frames_written") and hasattr(sink, "path") else None
        sink = self._tee = TeeSink(self._wrap_overlay(sink), self.result_written, self._first_stylised_frame,
                                   on_preview_failed=self.notice)
        # A live sink (virtual camera, window, MJPEG: paced) must never starve, so it starts at once on a
        # pass-through card while the model loads. An offline sink (a file, null) has no viewer: load first, so
        # every written frame is a stylised one.
        live_output = sink.fps is not None
        if not live_output:
            try:
                loaded = self._load_offline_model_unless_stopped()
            except BaseException:
                sink.close()
                source.close()
                raise
            if not loaded:  # stopped while loading: nothing was written, the file is closed empty
                sink.close()
                source.close()
                return 0
        self.pipeline = FramePipeline(
            source,
            self.processor if self.processor is not None else PassThroughProcessor(),
            sink,
            PipelineConfig(max_frames=self.settings.frames),
            between_frames=self._between_frames,
            result_written=self.result_written,
        )
        self.pipeline.start()
        threads = [
            threading.Thread(target=self._dispatch_commands, name="vcam-commands", daemon=True),
            threading.Thread(target=self._watch_pipeline, name="vcam-watch", daemon=True),
            threading.Thread(target=self._status_loop, name="vcam-status", daemon=True),
        ]
        if live_output:
            threads.append(threading.Thread(target=self._load_model_in_background, name="vcam-model", daemon=True))
        self._model_threads += [thread for thread in threads if thread.name in MODEL_THREADS]
        try:
            self._start_controls()
            for thread in threads:
                thread.start()
            if self._qt_host is not None:
                self._run_qt_until_stopped()
            else:
                while not self.stop_event.wait(0.2):
                    pass
        finally:
            self._shut_down([thread for thread in threads if thread.name not in MODEL_THREADS])
        if self.pipeline.error is not None:
            log_traceback(self.pipeline.error, f"the {self.pipeline.error_stage} stage failed")
            self.notice(f"stopped: {self.pipeline.error}")
            return 1
        if self.error is not None:
            return 1
        return 0

    def _shut_down(self, threads: list[threading.Thread]) -> None:
        """Release the devices and finalise the files first (within RELEASE_SECONDS), then stop the controls."""
        self.stop_event.set()
        if self._stop_reason is not None:
            into_call = self._stop_into_model_call
            log.info("stop requested (%s)%s", self._stop_reason,
                     "" if into_call is None else f" {into_call:.1f} s into a model call")
        self.pipeline.stop(timeout=RELEASE_SECONDS)  # the camera and the virtual camera are released first
        # "input and output": a camera and a virtual camera, or the sample source and a file alike
        if self.pipeline.released_after is not None and self._stop_reason is not None:
            log.info("input and output released %.2f s after the stop request",
                     self.pipeline.released_after)
        elif self.pipeline.released_after is not None:  # the run ended by itself (--frames, the end of a file)
            log.info("input and output released")
        stats = self.pipeline.stats()
        loading = stats.processed - stats.results
        log.info("%d stylised frame%s%s", stats.results, "" if stats.results == 1 else "s",
                 f" (and {loading} pass-through frames while the model loaded)" if loading else "")
        if self._file_sink is not None:  # closed: what the file holds
            log.info("%s: %d frames written", self._file_sink.path, self._file_sink.frames_written)
        self._stop_controls()
        if self._qt_host is not None:
            self._qt_host.quit()
        for thread in threads:
            if thread.is_alive():
                thread.join(timeout=1.0)

    def _run_qt_until_stopped(self) -> None:
        """Qt's loop owns the main thread; Python runs a signal handler only when Python code runs there, so a
        heartbeat posts a no-op to the GUI thread 4 times a second (Ctrl+C and SIGTERM are then answered)."""
        host = self._qt_host

        def heartbeat() -> None:
            while not self.stop_event.wait(0.25):
                host.call_soon(lambda: None)
            host.quit()

        threading.Thread(target=heartbeat, name="vcam-qt-heartbeat", daemon=True).start()
        host.run()

    def _first_stylised_frame(self) -> None:
        """Said once: how long from launching the process to the first stylised frame the output received."""
        import psutil  # a dependency; imported here as only this line needs it

        try:
            since_launch = time.time() - psutil.Process().create_time()
        except (OSError, psutil.Error) as error:  # a diagnostic only: said in the log, not to the user
            log.debug("no launch time for the first-frame line: %s", error)
            return
        self.notice(f"first stylised frame {since_launch:.1f} s after launch")

    def _wrap_overlay(self, sink):
        return OverlaySink(sink, self.status_text) if self.options.overlay else sink

    def open_preview(self) -> None:
        """Tray "Open preview": a window beside the virtual camera showing the same frames (GUI thread)."""
        if self._tee is None or self._tee.preview is not None:
            return
        config = SinkConfig(width=640, height=360, fps=self.settings.sink_config.fps, fit=self.settings.sink_config.fit)
        try:
            self._tee.preview = open_sink("window", config, host=self.ensure_qt_host())
        except (SinkError, ImportError, OSError) as error:  # no Qt, no display: the stream goes on without it
            self.notice(f"preview window not available: {error}")
