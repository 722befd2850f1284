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
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

from core.pipeline import FramePipeline, PipelineConfig
from engines.base import ModelError
from vcam import commands as cmd
from vcam.commands import CommandQueue
from vcam.logs import log_traceback, setup_logging
from vcam.processor import DiffusionProcessor, PassThroughProcessor
from vcam.settings import RunSettings
from vcam.stop_signals import StopSignals

log = logging.getLogger("vcam")

RELEASE_SECONDS = 2.0  # stop request -> camera and virtual camera released, files finalised
MODEL_CALL_WAIT_SECONDS = 3.0  # then: how long the model's call in flight may take to return
MODEL_THREADS = ("vcam-model", "vcam-commands")  # threads that call the model (load / warm-up, prompt encoding)


@dataclass(frozen=True)
class ServiceOptions:
    tray: bool = True
    hotkeys: bool = True
    obs: bool | None = None  # None: as the preset says
    osc: bool | None = None
    overlay: bool = False
    status_line: bool = True
    # True when this run is the whole process (the CLI): a model call still running after the shutdown is then
    # abandoned by ending the process (see the module docstring). An embedding application keeps its process.
    owns_process: bool = False


class Service:
    """One run of vcam. `run()` blocks until quit, the frame limit, or the end of a non-looping source."""

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
        self.ready_event = threading.Event()  # the diffusion processor is live
        self.stylised_event = threading.Event()  # the output received its first stylised frame
        self.prompt_index = 0
        self.prompt_label = settings.prompts[0].name if settings.prompts else "custom"
        self.messages: list[str] = []  # one-line notices (kept for tests and the status overlay)
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
    def _settle_model(self) -> None:
        from vcam.runtime import check_model

        try:
            check_model(self.settings)
        except ModelError as error:
            if not self.settings.model_from_preset:
                raise
            typed = self.settings.given_options
            kept = f" (kept from the command line: {', '.join(typed)})" if typed else ""
            self.notice(f"{error} -- using the offline '{fallback_preset_name(self.settings)}' preset's model and "
                        f"stream settings instead{kept}")
            self.settings = with_tiny_model(self.settings)

    def _open_source(self):
        from vcam.sources import SourceError, open_source

        spec = self.settings.source
        config = self.settings.source_config
        if config.live is None and not is_offline_sink(self.settings.sink):
            # Feeding a live output, a file or pattern stands in for a camera: paced at its own rate, looped.
            config = replace(config, live=True)
        try:
            source = open_source(spec, config)
        except SourceError as error:
            if self.settings.source_given:
                raise
            self.notice(f"{error} -- using the sample photo (a moving real photograph) instead")
            source = open_source("sample", replace(self.settings.source_config, live=True))
            spec = "sample"
        self.notice(f"source: {spec}")
        return source

    def _open_sink(self):
        from vcam.sinks import SinkError, open_sink

        spec = self.settings.sink
        chain = ["vcam", "window", "mjpeg"] if spec == "auto" else [spec]
        if spec == "window" and not self._qt_available():
            raise SinkError("the preview window needs a display; use --sink vcam, --sink mjpeg or an output file")
        errors = []
        for candidate in chain:
            if candidate == "window" and not self._qt_available():
                errors.append("window: no display")
                continue
            try:
                sink = open_sink(candidate, self.settings.sink_config, **self._sink_extras(candidate))
            except SinkError as error:
                if len(chain) == 1:
                    raise
                errors.append(f"{candidate}: {error}")
                continue
            if errors:
                self.notice("output: " + "; ".join(errors) + f" -- using {candidate}")
            url = getattr(sink, "url", None)  # a network output: the address to open (mjpeg:0 shows its real port)
            self.notice(f"output: {candidate}" + (f" at {url}" if url else ""))
            return sink
        raise SinkError("no output could open: " + "; ".join(errors))

    def _sink_extras(self, candidate: str) -> dict:
        if candidate == "window":
            return {"host": self.ensure_qt_host()}
        return {}

    def _qt_available(self) -> bool:
        from vcam.qt_host import QtHost

        return QtHost.available()

    def ensure_qt_host(self):
        if self._qt_host is None:
            from vcam.qt_host import QtHost

            self._qt_host = QtHost()
        return self._qt_host

    # ----------------------------------------------------------------------------------------------- model
    def _build_processor(self) -> None:
        """Build the engine and the stream, then swap the processor in at a frame boundary. Raises user errors."""
        from vcam.runtime import build_stream, create_engine_for, warm_up

        start = time.perf_counter()
        engine = create_engine_for(self.settings)
        if self.stop_event.is_set():  # stopped during a long load or export: no more model calls
            return
        self.stream = build_stream(engine, self.settings, notify=self.notice)
        self._apply_prompt_index(self.prompt_index)
        if self.stop_event.is_set():
            return
        warm_up(self.stream)
        # A file gets frame k = stylised input frame k (no warm-up frames); a live output takes the batch's latency
        self.processor = DiffusionProcessor(self.stream, fit=self.settings.sink_config.fit,
                                            aligned=self.pipeline is None and self._file_sink is not None)
        if self.pipeline is not None:
            self.pipeline.set_processor(self.processor)
        self.ready_event.set()
        self.notice(f"model ready in {time.perf_counter() - start:.1f} s ({engine.name} on {engine.device})")

    def _load_model_in_background(self) -> None:
        """Live sinks: the camera keeps flowing (pass-through) while this runs; a failure ends the run in one line."""
        try:
            self._build_processor()
        except BaseException as error:  # noqa: BLE001
            self.error = error
            log_traceback(error, "the model could not start")
            self.notice(f"the model could not start: {error}")
            self.stop_event.set()

    # ----------------------------------------------------------------------------------------------- commands
    def _between_frames(self) -> None:
        with self._pending_lock:
            actions, self._pending = self._pending, []
        for action in actions:
            action()

    def _at_frame_boundary(self, action: Callable[[], None]) -> None:
        with self._pending_lock:
            self._pending.append(action)

    def _find_prompt(self, name: str) -> int | None:
        for i, prompt in enumerate(self.settings.prompts):
            if prompt.name.lower() == name.lower():
                return i
        return None

    def _apply_prompt_index(self, index: int, blend_frames: int = 0) -> None:
        prompt = self.settings.prompts[index]
        self.prompt_index = index
        self.prompt_label = prompt.name
        if self.stream is not None:
            self.stream.prompts.switch(prompt.text, blend_frames=blend_frames)

    def apply(self, command: cmd.Command) -> None:
        """Apply one command (dispatcher thread). Prompt texts are encoded here, never on the inference thread."""
        names = ", ".join(p.name for p in self.settings.prompts)
        if isinstance(command, cmd.SwitchPrompt):
            if command.name is not None:
                index = self._find_prompt(command.name)
                if index is None:
                    self.notice(f"unknown prompt {command.name!r}; known: {names}")
                    return
            elif self.settings.prompts:
                index = (self.prompt_index + command.step) % len(self.settings.prompts)
            else:
                return
            self._apply_prompt_index(index)
        elif isinstance(command, cmd.BlendToPrompt):
            index = self._find_prompt(command.name)
            if index is None:
                self.notice(f"unknown prompt {command.name!r}; known: {names}")
                return
            self._apply_prompt_index(index, blend_frames=command.frames)
        elif isinstance(command, cmd.SetPromptText):
            self.prompt_label = command.text[:40]
            self._say_if_cut([command.text])
            if self.stream is not None:
                self.stream.prompts.switch(command.text)
        elif isinstance(command, cmd.SetPaused):
            self._at_frame_boundary(lambda: self._set_paused(command.paused))
        elif isinstance(command, cmd.SetSimilarityFilter):
            self._at_frame_boundary(lambda: self._set_filter(command.enabled))
        elif isinstance(command, cmd.ReloadPreset):
            self._reload_preset()
        elif isinstance(command, cmd.Quit):
            self.request_stop("quit command")

    @property
    def paused(self) -> bool:
        return bool(self.processor is not None and self.processor.paused)

    @property
    def filter_enabled(self) -> bool:
        return bool(self.stream is not None and self.stream.similarity is not None and self.stream.similarity.enabled)

    def _set_paused(self, paused: bool | None) -> None:
        if self.processor is not None:
            self.processor.paused = (not self.processor.paused) if paused is None else paused

    def _set_filter(self, enabled: bool | None) -> None:
        if self.stream is not None and self.stream.similarity is not None:
            sim = self.stream.similarity
            sim.set_enabled((not sim.enabled) if enabled is None else enabled)

    def _reload_preset(self) -> None:
        preset = self.settings.preset
        if preset is None or preset.source_path is None:
            self.notice("reload: this run has no preset file to reload")
            return
        from vcam.presets import PresetError, load_preset

        try:
            fresh = load_preset(str(preset.source_path))
        except PresetError as error:
            self.notice(f"reload failed, keeping the current settings: {error}")
            return
        self._say_if_cut([p.text for p in fresh.prompts if p not in self.settings.prompts])
        if self.stream is not None:
            self.stream.prompts.cache.prefill([p.text for p in fresh.prompts])
        current = self.settings.prompts[self.prompt_index].name if self.settings.prompts else None
        self.settings = replace(self.settings, prompts=tuple(fresh.prompts), preset=fresh)
        index = self._find_prompt(current) if current else None
        self._apply_prompt_index(index if index is not None else 0)
        changed = [s for s in ("model", "stream") if getattr(fresh, s) != getattr(preset, s)]
        note = f"; restart to apply [{', '.join(changed)}]" if changed else ""
        self.notice(f"preset reloaded: {len(fresh.prompts)} prompts{note}")

    def _say_if_cut(self, texts: list[str]) -> None:
        """A prompt that arrives while running is checked as the start-up prompts are: cut ones are said once."""
        from engines.prompt_tokens import PromptLength
        from vcam.runtime import say_cut_prompts

        try:
            length = PromptLength.for_model(self.settings.model)
        except ModelError:  # the model is checked at start-up; a tokenizer gone since then is not this command's
            return
        say_cut_prompts(length, texts, self.notice)

    def _dispatch_commands(self) -> None:
        while not self.stop_event.is_set():
            item = self.queue.get(timeout=0.1)
            if item is None:
                continue
            try:
                self.apply(item.command)
            except Exception as error:  # noqa: BLE001 - a bad command never stops the stream
                self.notice(f"command from {item.origin} failed: {error}")

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
        stats = self.pipeline.stats()
        skip = self.stream.similarity.skip_rate if self.stream is not None and self.stream.similarity else 0.0
        # "live" from the first stylised frame the output received (the model being built is not yet live)
        state = "paused" if self.paused else ("live" if self.stylised_event.is_set() else "loading")
        return f"{stats.fps:5.1f} fps | skip {skip:4.0%} | {self.prompt_label} | {state}"

    def _status_loop(self) -> None:
        interactive = sys.stderr.isatty()
        last_logged = 0.0
        while not self.stop_event.wait(1.0):
            text = self.status_text()
            if interactive and self.options.status_line:
                sys.stderr.write("\r\x1b[2K" + text)
                sys.stderr.flush()
            elif time.monotonic() - last_logged > 10:
                # Not a terminal (a service, a pipe): a status line every 10 s; with --quiet in the log file only.
                log.log(logging.INFO if self.options.status_line else logging.DEBUG, text)
                last_logged = time.monotonic()
        if interactive and self.options.status_line:
            sys.stderr.write("\n")

    # ----------------------------------------------------------------------------------------------- lifecycle
    def request_stop(self, reason: str) -> None:
        """Ask the run to stop (any thread, or a signal handler: only sets flags). A second request while stopping
        means "do not wait for the model's call in flight"; the release and the files' finalisation still happen."""
        if self.stop_event.is_set():
            self._hurry.set()
        elif self._stop_reason is None:
            self._stop_reason = reason
        self.stop_event.set()
        if self._qt_host is not None:
            self._qt_host.quit()

    def _watch_pipeline(self) -> None:
        while not self.stop_event.is_set():
            if self.pipeline is not None and self.pipeline.wait(timeout=0.2):
                self.stop_event.set()

    def _load_offline_model_unless_stopped(self) -> bool:
        """An offline sink loads the model before the pipeline starts, on the model thread all the same, so that a
        stop during a long load, build or export is answered at once. False if the stop came first; raises the
        load's user errors (one line in the CLI)."""
        failures: list[BaseException] = []

        def build() -> None:
            try:
                self._build_processor()
            except BaseException as error:  # noqa: BLE001 - re-raised on the main thread
                failures.append(error)

        loader = threading.Thread(target=build, name="vcam-model", daemon=True)
        self._model_threads.append(loader)
        loader.start()
        while loader.is_alive() and not self.stop_event.is_set():
            loader.join(0.2)
        if failures:
            raise failures[0]
        return self.processor is not None and not self.stop_event.is_set()

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
        sink = self._tee = TeeSink(self._wrap_overlay(sink), self.ready_event, self._first_stylised_frame)
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
            log.info("stop requested (%s)", self._stop_reason)
        self.pipeline.stop(timeout=RELEASE_SECONDS)  # the camera and the virtual camera are released first
        if self.pipeline.released_after is not None:
            log.info("camera and virtual camera released %.2f s after the stop request",
                     self.pipeline.released_after)
        stats = self.pipeline.stats()
        loading = stats.processed - stats.results
        log.info("%d stylised frames%s", stats.results,
                 f" (and {loading} pass-through frames while the model loaded)" if loading else "")
        if self._file_sink is not None:  # closed: what the file holds
            log.info("%s: %d frames written", self._file_sink.path, self._file_sink.frames_written)
        self._stop_controls()
        if self._qt_host is not None:
            self._qt_host.quit()
        for thread in threads:
            if thread.is_alive():
                thread.join(timeout=1.0)

    def _wait_for_model_calls(self) -> list[str]:
        """Give the model's call in flight (inference, a load or export, a prompt encoding) MODEL_CALL_WAIT_SECONDS
        to return, less after a second stop request; the names of the threads still inside it."""
        deadline = time.monotonic() + MODEL_CALL_WAIT_SECONDS

        def busy() -> list[str]:
            names = [thread.name for thread in self._model_threads if thread.is_alive()]
            if self.pipeline is not None and not self.pipeline.join(timeout=0):
                names.append("vcam-inference")
            return names

        while busy() and time.monotonic() < deadline and not self._hurry.is_set():
            if self.pipeline is not None:
                self.pipeline.join(timeout=0.1)
            else:
                time.sleep(0.1)
        return busy()

    def _abandon(self, threads: list[str], status: int) -> None:
        """A model call is still running and cannot be interrupted. With the process ours, end it now (the devices
        are released, the files written; the logs are flushed here) rather than let the interpreter abort under
        the call; embedded, leave the call to the application."""
        if not self.options.owns_process:
            log.debug("still inside a model call after the stop: %s", ", ".join(threads))
            return
        log.info("ending without waiting for the model call in flight (%s)", ", ".join(threads))
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)

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
        self.stylised_event.set()
        try:
            import psutil

            since_launch = time.time() - psutil.Process().create_time()
        except Exception:  # noqa: BLE001 - a diagnostic only
            return
        self.notice(f"first stylised frame {since_launch:.1f} s after launch")

    def _wrap_overlay(self, sink):
        return OverlaySink(sink, self.status_text) if self.options.overlay else sink

    def open_preview(self) -> None:
        """Tray "Open preview": a window beside the virtual camera showing the same frames (GUI thread)."""
        if self._tee is None or self._tee.preview is not None:
            return
        from vcam.sinks import SinkConfig, open_sink

        config = SinkConfig(width=640, height=360, fps=self.settings.sink_config.fps, fit=self.settings.sink_config.fit)
        try:
            self._tee.preview = open_sink("window", config, host=self.ensure_qt_host())
        except Exception as error:  # noqa: BLE001
            self.notice(f"preview window not available: {error}")


def fallback_preset_name(settings: RunSettings) -> str:
    """The offline preset a run falls back to when its model is missing: the same kind of solver."""
    from vcam.settings import fallback_preset_name as name_for

    return name_for(settings.stream)


def with_tiny_model(settings: RunSettings) -> RunSettings:
    """The fallback when the preset's model is not on this machine: the tiny model and the fallback preset's stream
    settings (its resolution and steps suit it, and its negative prompt: a preset's is written for its own model),
    under the same command line: every typed option is kept. The camera, the output, the preset's prompts and the
    controls stay the run's own. A ddim / dpmsolver++ preset falls back to `tiny-dpm` (the same kind of solver)."""
    fallback = settings.fallback
    if fallback is None:
        raise ValueError("with_tiny_model needs settings resolved with a model from a preset")
    return replace(settings, model=fallback.model, engine=fallback.engine, device=fallback.device,
                   threads=fallback.threads, stream=replace(fallback.stream, prompt=settings.stream.prompt),
                   fallback=None)


def is_offline_sink(spec: str) -> bool:
    """A file or the null sink: nobody watches in real time, so sources are read as fast as they are consumed."""
    from pathlib import Path

    return spec == "null" or Path(spec).suffix.lower() in (".mp4", ".avi", ".mkv", ".mov", ".webm")


class OverlaySink:
    """Draws the status line (fps, skip rate, prompt) on every frame before it reaches the wrapped sink."""

    def __init__(self, sink, text: Callable[[], str]) -> None:
        self.sink = sink
        self.text = text
        self.fps = sink.fps

    def write(self, frame) -> None:
        from vcam.overlay import draw_status

        self.sink.write(draw_status(frame.copy(), [self.text()]))

    def close(self) -> None:
        self.sink.close()


class TeeSink:
    """The main sink plus an optional preview window opened later from the tray; a failing preview is dropped.
    Calls `on_first_stylised` once, after the first frame written once the model is ready."""

    def __init__(self, sink, ready: threading.Event, on_first_stylised: Callable[[], None]) -> None:
        self.sink = sink
        self.fps = sink.fps
        self.preview = None
        self._ready = ready
        self._on_first_stylised: Callable[[], None] | None = on_first_stylised

    def write(self, frame) -> None:
        self.sink.write(frame)
        if self._on_first_stylised is not None and self._ready.is_set():
            callback, self._on_first_stylised = self._on_first_stylised, None
            callback()
        preview = self.preview
        if preview is not None:
            try:
                preview.write(frame)
            except Exception:  # noqa: BLE001 - the preview is a convenience; the virtual camera goes on
                self.preview = None

    def close(self) -> None:
        try:
            if self.preview is not None:
                self.preview.close()
        finally:
            self.sink.close()
