"""The service's command handling, one concern of `vcam.service.Service` kept in its own file: prompt switches and
blends, pause, the similarity filter, preset reload and quit, applied on the dispatcher thread (prompt texts are
encoded there, never on the inference thread) or queued for the pipeline's between-frames hook."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from vcam import commands as cmd
from vcam.logs import log_traceback



class ServiceCommands:
    """Mixed into `Service`: works on its state (settings, stream, processor, prompt index and label)."""

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
        from engines.base import ModelError
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
                log_traceback(error, f"command from {item.origin}")  # a bug here must be findable in the log
