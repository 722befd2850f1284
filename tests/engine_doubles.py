"""`RecordingEngine`: the real engine, with every call it receives written down for tests to inspect.

It forwards to the wrapped engine unchanged (so the numbers are the real tiny model's); it only records the
UNet's inputs and outputs, the texts sent to the text encoder (and from which thread), and the VAE calls.
`noise_schedule` may be overridden to read the same UNet output as v instead of epsilon (the math differs, the
UNet does not need to).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import torch

from engines.base import Engine, NoiseScheduleConfig


@dataclass(frozen=True)
class UNetCall:
    latents: torch.Tensor  # (B, C, h, w)
    timesteps: torch.Tensor  # (B,)
    embeddings: torch.Tensor  # (B, L, D)
    output: torch.Tensor  # (B, C, h, w)


class RecordingEngine:
    """Forwards to `engine`, recording what it is asked."""

    def __init__(self, engine: Engine, noise_schedule: NoiseScheduleConfig | None = None) -> None:
        self._engine = engine
        self.name = f"recording-{engine.name}"
        self.device = engine.device
        self.dtype = engine.dtype
        self.noise_schedule = noise_schedule or engine.noise_schedule
        self.latent_channels = engine.latent_channels
        self.vae_scale_factor = engine.vae_scale_factor
        self.unet_calls: list[UNetCall] = []
        self.prompt_batches: list[list[str]] = []
        self.prompt_threads: list[int] = []
        self.image_encodes = 0
        self.latent_decodes = 0
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        """Every call of any kind, e.g. to prove a skipped frame cost nothing."""
        return len(self.unet_calls) + len(self.prompt_batches) + self.image_encodes + self.latent_decodes

    def encode_prompt(self, texts: Sequence[str]) -> torch.Tensor:
        with self._lock:
            self.prompt_batches.append(list(texts))
            self.prompt_threads.append(threading.get_ident())
        return self._engine.encode_prompt(texts)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        self.image_encodes += 1
        return self._engine.encode_images(images)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        self.latent_decodes += 1
        return self._engine.decode_latents(latents)

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        output = self._engine.predict_noise(latents, timesteps, embeddings)
        self.unet_calls.append(UNetCall(latents.clone(), timesteps.clone(), embeddings.clone(), output.clone()))
        return output


class ConvNoisePredictor:
    """A cheap stand-in for the UNet where the real one would make a test too slow for the shared 2-core machines:
    a seeded random 3x3 convolution, non-linear in the latents, depending on timestep and embeddings, and
    computed row by row-independently like a UNet (so batching it must not change any row's result)."""

    def __init__(self, channels: int = 4, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(channels, channels, 3, 3, generator=generator) * 0.2

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        mixed = torch.nn.functional.conv2d(latents, self.weight, padding=1)  # (B, C, h, w)
        phase = torch.cos(timesteps.float() / 300.0).reshape(-1, 1, 1, 1)
        prompt = embeddings.float().mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        return torch.tanh(mixed * (1.0 + phase)) + 0.5 * latents + prompt
