"""`DiffusionStream`: images in, restyled images out, one stream-batch UNet call per group of F frames.

Per call: cross the frame boundary (take this frame's prompt embeddings), ask the similarity filter whether the
input may be skipped (then return the previous output with no engine call at all), VAE-encode, advance the
stream batch one step with residual guidance, VAE-decode. Everything that does not depend on the frame (the
schedule, the fixed noise, the batched prompt embeddings per prompt version) is computed once, not per frame.

Not thread-safe by design: it lives on the inference thread. Prompt switches reach it through the thread-safe
`PromptSwitcher`; config changes are applied between frames by whoever owns the thread (`update_config`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from core.config import StreamConfig
from core.guidance import ResidualGuidance
from core.prompts import FrameEmbeddings, PromptSwitcher
from core.schedule import Schedule
from core.stream_batch import StreamBatch
from engines.base import Engine, StatefulEngine

if TYPE_CHECKING:
    from core.similarity import SimilarityFilter

# Settings that change the shape or the noise of the stream batch: changing one restarts the buffer.
REBUILD_BATCH_FIELDS = (
    "width", "height", "t_index_list", "grid_steps", "frame_buffer_size", "seed", "mode",
    "scheduler", "num_inference_steps", "strength", "solver_order", "use_karras_sigmas", "lower_order_final",
)
# Settings of the guidance only: changing one keeps the buffered frames and rebuilds the guidance.
REBUILD_GUIDANCE_FIELDS = ("guidance", "guidance_scale", "delta")


class DiffusionStream:
    """The stream-batch img2img / txt2img core over one `Engine`."""

    def __init__(
        self,
        engine: Engine,
        config: StreamConfig,
        prompts: PromptSwitcher,
        similarity: "SimilarityFilter | None" = None,
    ) -> None:
        self.engine = engine
        self.prompts = prompts
        self.similarity = similarity
        self.unet_calls = 0
        self.skipped_frames = 0
        self.last_unet_batch_size: int | None = None
        self.embedding_builds = 0  # how often the batched prompt embeddings were rebuilt (once per prompt version)
        self._last_output: torch.Tensor | None = None  # (F, 3, H, W) in [0, 1]
        self._output_version: int | None = None  # prompt version the last output was made with
        self._build(config)

    # --- configuration -------------------------------------------------------------------------------------
    def _build(self, config: StreamConfig) -> None:
        """(Re)compute the schedule, the fixed noise, the buffer and the guidance for `config`."""
        self.config = config
        engine = self.engine
        self.schedule = Schedule.build(config, engine.noise_schedule, engine.device, engine.dtype)
        factor = engine.vae_scale_factor
        self.latent_shape = (engine.latent_channels, config.height // factor, config.width // factor)
        self.batch = StreamBatch(self.schedule, self.latent_shape, config.seed, self._predict_epsilon)
        self._build_guidance()
        self._engine_forgets()

    def _build_guidance(self) -> None:
        c = self.config
        self.guidance = ResidualGuidance(
            c.guidance, c.guidance_scale, c.delta, self.schedule, self.batch.noise, self._counted_unet
        )
        self._embeddings_version: int | None = None  # forces set_embeddings at the next frame

    def update_config(self, config: StreamConfig) -> None:
        """Apply a new config between frames. Fields in REBUILD_BATCH_FIELDS restart the buffer (the next T-1
        outputs are the warm-up kind again); guidance fields rebuild the guidance and keep the buffer; prompt
        and negative_prompt are handed to the prompt switcher (they apply at the next frame boundary).

        An engine built for fixed shapes (ONNX, TensorRT) must match the new `config.unet_batch`: rebuild it first.
        """
        old = self.config
        if config.prompt != old.prompt:
            self.prompts.switch(config.prompt)
        if config.negative_prompt != old.negative_prompt:
            self.prompts.set_negative_prompt(config.negative_prompt)
        if any(getattr(config, f) != getattr(old, f) for f in REBUILD_BATCH_FIELDS):
            self._build(config)
            self._last_output = None
        elif any(getattr(config, f) != getattr(old, f) for f in REBUILD_GUIDANCE_FIELDS):
            self.config = config
            self._build_guidance()  # the stock noise restarts from the fixed noise: exact again from T-1 frames on
        else:
            self.config = config

    def with_changes(self, **changes: object) -> None:
        """`update_config(replace(config, **changes))`, for callers that change one or two settings."""
        self.update_config(replace(self.config, **changes))

    # --- per frame -----------------------------------------------------------------------------------------
    def process(self, images: torch.Tensor) -> torch.Tensor:
        """img2img: (F, 3, H, W) float in [0, 1] -> (F, 3, H, W) in [0, 1], T-1 frames behind the input.

        In txt2img mode the images only pace the stream: each call returns the next txt2img group.
        """
        if self.config.mode == "txt2img":
            return self.txt2img()
        self._check_images(images)
        frame = self.prompts.frame_embeddings()
        if self._may_skip(images, frame.version):
            self.skipped_frames += 1
            assert self._last_output is not None
            return self._last_output
        return self._img2img(images, frame)

    def txt2img(self) -> torch.Tensor:
        """One txt2img output group (F, 3, H, W) in [0, 1]: seeded fresh noise enters slot 0."""
        frame = self.prompts.frame_embeddings()
        self._use_embeddings(frame)
        return self._finish(self.batch.step(None), frame.version)

    def warmup(self, images: torch.Tensor | None, frames: int | None = None) -> torch.Tensor:
        """Fill the buffer with real frames before going live: `frames` calls (default T, so the last output is a
        fully denoised frame) on `images` (ignored in txt2img mode), never skipped by the similarity filter."""
        count = self.config.steps if frames is None else frames
        if count < 1:
            raise ValueError(f"warmup needs at least one frame, got {count}")
        for _ in range(count):
            if self.config.mode == "txt2img" or images is None:
                output = self.txt2img()
            else:
                output = self._img2img(images, self.prompts.frame_embeddings())
        return output

    def reset(self) -> None:
        """Forget the buffered frames (e.g. after a cut in the source); the next call primes the buffer again."""
        self.batch.reset()
        self.guidance.reset()
        self._last_output = None
        self._engine_forgets()

    def _engine_forgets(self) -> None:
        """A new or reset batch: an engine that reads its earlier calls (AsyncDiff) must not mix them in."""
        if isinstance(self.engine, StatefulEngine):
            self.engine.forget_previous_calls()

    # --- helpers -------------------------------------------------------------------------------------------
    def _may_skip(self, images: torch.Tensor, version: int) -> bool:
        """Ask the filter, but never skip without a previous output made with this frame's prompt: a prompt switch
        on a still camera must still show up (the filter is reset, so this frame becomes its reference)."""
        if self.similarity is None:
            return False
        if self._last_output is None or version != self._output_version:
            self.similarity.reset()
        return self.similarity.should_skip(images * 2 - 1)  # centred: see core.similarity

    def _check_images(self, images: torch.Tensor) -> None:
        expected = (self.config.frame_buffer_size, 3, self.config.height, self.config.width)
        if tuple(images.shape) != expected:
            raise ValueError(f"expected images of shape {expected} (F, 3, H, W), got {tuple(images.shape)}")

    def _img2img(self, images: torch.Tensor, frame: FrameEmbeddings) -> torch.Tensor:
        self._check_images(images)
        self._use_embeddings(frame)
        pixels = images.to(device=self.engine.device, dtype=self.engine.dtype) * 2.0 - 1.0
        latents = self.engine.encode_images(pixels)  # (F, C, h, w)
        return self._finish(self.batch.step(latents), frame.version)

    def _use_embeddings(self, frame: FrameEmbeddings) -> None:
        """Rebuild the batched embeddings only when the prompt version changed (not per frame)."""
        if frame.version == self._embeddings_version:
            return
        device, dtype = self.engine.device, self.engine.dtype
        cond, uncond = frame.cond.to(device=device, dtype=dtype), frame.uncond.to(device=device, dtype=dtype)
        self.guidance.set_embeddings(cond, uncond)
        self._embeddings_version = frame.version
        self.embedding_builds += 1

    def _predict_epsilon(self, x_t: torch.Tensor, slot0_noise: torch.Tensor) -> torch.Tensor:
        return self.guidance.predict(x_t, slot0_noise)

    def _counted_unet(self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        self.unet_calls += 1
        self.last_unet_batch_size = latents.shape[0]
        return self.engine.predict_noise(latents, timesteps, embeddings)

    def _finish(self, latents: torch.Tensor, version: int) -> torch.Tensor:
        images = self.engine.decode_latents(latents)  # (F, 3, H, W) in [-1, 1]
        output = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        self._last_output = output
        self._output_version = version
        return output
