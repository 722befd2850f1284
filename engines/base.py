"""The contract between `core` (stream-batch math) and whatever runtime executes the model.

Everything `core` needs from a diffusion model is the four calls below, for shapes fixed when the engine is
built. Keeping the contract this small is what lets torch eager, torch.compile, ONNX Runtime and TensorRT be
swapped without `core` knowing which one runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # the contract names torch types; importing torch (seconds) is left to the engines that run one
    import torch


class ModelError(Exception):
    """A model that cannot be used: missing, partial, unsafe or of the wrong architecture.

    The message is one line that says what was expected and how to get it; the CLI prints it as is.
    """


class EngineUnavailableError(Exception):
    """An engine that cannot run on this machine (no GPU, package missing); the message names the fix.

    `reason` is the message without `fix`: what `--engine auto` reports for a candidate it skipped, where advice to
    choose another engine has no place (auto already did).
    """

    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__(f"{reason}; {fix}" if fix else reason)
        self.reason, self.fix = reason, fix


@dataclass(frozen=True)
class NoiseScheduleConfig:
    """The training noise schedule of a model (what its scheduler_config.json says)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"


@dataclass(frozen=True)
class EngineShapes:
    """The static shapes an engine is built for (ONNX / TensorRT need them; torch ignores them).

    `unet_batch` is T*F for RCFG none/self, 2*T*F for full, (T+1)*F for initialize.
    """

    width: int
    height: int
    frame_batch: int  # F: images per encode / decode call
    unet_batch: int
    text_batch: int = 1


@runtime_checkable
class Engine(Protocol):
    """A diffusion model ready to run. Images are (B, 3, H, W) in [-1, 1]; latents are already VAE-scaled."""

    name: str  # "torch", "torch-compile", "onnxruntime", "tensorrt"
    device: torch.device
    dtype: torch.dtype
    noise_schedule: NoiseScheduleConfig
    latent_channels: int  # 4 for SD 1.x / 2.x
    vae_scale_factor: int  # 8: pixels per latent cell

    def encode_prompt(self, texts: Sequence[str]) -> torch.Tensor:
        """Text encoder: (N,) texts -> (N, tokens, embed_dim). Called only on a prompt-cache miss."""
        ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """VAE / TAESD encoder: (B, 3, H, W) in [-1, 1] -> (B, C, H/8, W/8) scaled latents (deterministic)."""
        ...

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE / TAESD decoder: (B, C, h, w) scaled latents -> (B, 3, 8h, 8w) in [-1, 1]."""
        ...

    def predict_noise(
        self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor
    ) -> torch.Tensor:
        """UNet: latents (B, C, h, w), timesteps (B,) long, embeddings (B, tokens, dim) -> model output (B, C, h, w).

        The output is epsilon or v according to `noise_schedule.prediction_type`.
        """
        ...


@runtime_checkable
class StatefulEngine(Protocol):
    """An engine whose output depends on its earlier calls, not only on this call's inputs (AsyncDiff feeds each
    stage what the stage before it computed on earlier calls). The stream calls `forget_previous_calls` whenever
    its calls stop following one another (a reset after a cut in the source, a rebuilt batch), so that the engine
    does not mix the old frames into the new ones."""

    def forget_previous_calls(self) -> None:
        """Treat the next call as the first one."""
        ...
