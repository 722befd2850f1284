"""Loading the model and waiting for its calls, one concern of `vcam.service.Service` kept in its own file.

The engine loads (or builds) on the "vcam-model" thread: for a live output while the camera already flows through
a pass-through processor, for an offline one before the pipeline starts (so every written frame is stylised).
A call into the model cannot be interrupted; after a stop it gets MODEL_CALL_WAIT_SECONDS to return, and a call
still running then is abandoned by ending the process when the CLI owns it (see `vcam.service`).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time

from vcam.fallbacks import settle_model
from vcam.logs import log_traceback
from vcam.processor import DiffusionProcessor

log = logging.getLogger("vcam")

MODEL_CALL_WAIT_SECONDS = 3.0  # after the release: how long the model's call in flight may take to return


class ServiceModel:
    """Mixed into `Service`: builds the engine, the stream and the diffusion processor, and waits for model calls."""

    def _settle_model(self) -> None:
        self.settings = settle_model(self.settings, self.notice)

    def _build_processor(self) -> None:
        """Build the engine and the stream, then swap the processor in at a frame boundary. Raises user errors."""
        from vcam.runtime import build_stream, create_engine_for, unet_precision, warm_up

        start = time.perf_counter()
        engine = create_engine_for(self.settings, owns_process=self.options.owns_process)
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
        bf16 = ", bf16 UNet" if unet_precision(engine, self.settings.precision) == "bf16" else ""  # auto / bf16
        self.notice(f"model ready in {time.perf_counter() - start:.1f} s ({engine.name} on {engine.device}{bf16})")

    def _load_model_in_background(self) -> None:
        """Live sinks: the camera keeps flowing (pass-through) while this runs; a failure ends the run in one line."""
        try:
            self._build_processor()
        except BaseException as error:  # noqa: BLE001
            self.error = error
            log_traceback(error, "the model could not start")
            self.notice(f"the model could not start: {error}")
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
