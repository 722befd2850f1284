"""`--engine torch-compile`: the torch engine with its UNet and VAE compiled by `torch.compile` (inductor).

The modules are compiled in place with `nn.Module.compile()`, so they keep their type and config (the torch
engine inspects both, e.g. to tell TAESD from the full VAE) and the torch engine's own calls are what run:
the same numbers as eager, within float rounding. Compilation happens at the engine's static shapes in
`warmup()`, which the constructor calls, so no frame is ever held up by a compile. On 2 CPU cores compiling
the tiny UNet takes minutes; the engine is meant for GPUs and larger CPUs.
"""
from __future__ import annotations

import shutil
import time
from typing import Literal, Sequence

import torch

from engines.base import EngineShapes, EngineUnavailableError
from engines.loading import DiffusionComponents, ModelSpec, load_components
from engines.onnx_export import EngineBuildError, first_line
from engines.torch_engine import TorchEngine

CompiledPart = Literal["unet", "vae"]


def require_compiler() -> None:
    """Inductor generates C++ on the CPU (and Triton on GPUs); without a C++ compiler it cannot work at all."""
    if not any(shutil.which(name) for name in ("g++", "c++", "clang++", "cl")):
        raise EngineUnavailableError(
            "torch.compile needs a C++ compiler (g++ or clang++) on PATH; install one or use --engine torch")


def compile_components(
    components: DiffusionComponents, parts: Sequence[CompiledPart], mode: str = "default"
) -> list[str]:
    """Compile the chosen modules in place; the names of what was compiled.

    The VAE is compiled as its encoder and decoder (what `encode` / `decode` call), not its forward.
    """
    compiled = []
    if "unet" in parts:
        components.unet.compile(mode=mode, dynamic=False)
        compiled.append("unet")
    if "vae" in parts:
        components.vae.encoder.compile(mode=mode, dynamic=False)
        components.vae.decoder.compile(mode=mode, dynamic=False)
        compiled += ["vae.encoder", "vae.decoder"]
    return compiled


class CompiledTorchEngine:
    """`Engine` that runs a `TorchEngine` over compiled modules; ready (compiled) once constructed."""

    name = "torch-compile"

    def __init__(self, components: DiffusionComponents, shapes: EngineShapes,
                 parts: Sequence[CompiledPart] = ("unet", "vae"), mode: str = "default") -> None:
        require_compiler()
        self.shapes = shapes
        self.embed_dim = int(components.unet.config.cross_attention_dim)
        self.compiled_parts = compile_components(components, parts, mode)
        self._engine = TorchEngine(components, shapes)
        self.device = self._engine.device
        self.dtype = self._engine.dtype
        self.noise_schedule = self._engine.noise_schedule
        self.latent_channels = self._engine.latent_channels
        self.vae_scale_factor = self._engine.vae_scale_factor
        self.build_report = {"compiled": self.compiled_parts, "warmup_seconds": self.warmup()}

    def warmup(self) -> float:
        """Run every compiled call once at the static shapes (this is when inductor compiles); its seconds."""
        shapes, channels = self.shapes, self.latent_channels
        h, w = shapes.height // self.vae_scale_factor, shapes.width // self.vae_scale_factor
        started = time.perf_counter()
        try:
            images = torch.zeros(shapes.frame_batch, 3, shapes.height, shapes.width)  # (F, 3, H, W)
            self.decode_latents(self.encode_images(images))
            self.predict_noise(
                torch.zeros(shapes.unet_batch, channels, h, w),  # (B, C, h, w)
                torch.full((shapes.unet_batch,), 500, dtype=torch.long),
                torch.zeros(shapes.unet_batch, 77, self.embed_dim),
            )
        except Exception as error:  # inductor raises many types; the user needs one line and a way out
            raise EngineBuildError(f"torch.compile failed ({first_line(error)}); use --engine torch") from error
        return round(time.perf_counter() - started, 2)

    def encode_prompt(self, texts: Sequence[str]) -> torch.Tensor:
        return self._engine.encode_prompt(texts)  # eager: runs only on a prompt-cache miss

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self._engine.encode_images(images)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self._engine.decode_latents(latents)

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self._engine.predict_noise(latents, timesteps, embeddings)


def build_compile_engine(spec: ModelSpec, shapes: EngineShapes, device: str, threads: int | None):
    """Factory entry (`--engine torch-compile`): load like the torch engine, then compile and warm up."""
    from engines.devices import place

    require_compiler()
    placement = place(device, threads)
    return CompiledTorchEngine(load_components(spec, placement.device, placement.dtype), shapes)
