"""`TorchEngine`: the model run by PyTorch eager. The reference every other backend is compared against.

No graph capture, no compilation: what diffusers and transformers do, under `torch.inference_mode`, with the
two choices that matter for speed on GPUs (fp16, channels-last memory layout on CUDA).
"""
from __future__ import annotations

from typing import Sequence

import torch

from engines.base import EngineShapes, ModelError, NoiseScheduleConfig
from engines.devices import flush_denormals_on_this_thread
from engines.kv_cache import CrossAttentionKV
from engines.loading import DiffusionComponents

MAX_TOKENS = 77  # CLIP's context: SD was trained on prompts padded / truncated to 77 tokens


class TorchEngine:
    """Runs UNet, VAE (or TAESD) and CLIP text encoder with torch eager for any batch size."""

    name = "torch"

    def __init__(self, components: DiffusionComponents, shapes: EngineShapes, cross_attention_kv: bool = False) -> None:
        """`cross_attention_kv`: project cross-attention keys / values once per prompt (engines.kv_cache). Off for
        the engines that trace or compile this one: a traced graph would keep the example prompt's K/V as constants."""
        self.shapes = shapes  # torch accepts any shape; kept so callers can ask what the engine was built for
        self.device: torch.device = components.unet.device
        self.dtype: torch.dtype = components.unet.dtype
        self.noise_schedule: NoiseScheduleConfig = components.noise_schedule
        self.content_hash = components.content_hash
        self._unet = components.unet
        self._vae = components.vae
        self._text_encoder = components.text_encoder
        self._tokenizer = components.tokenizer
        self._vae_is_tiny = type(components.vae).__name__ == "AutoencoderTiny"
        self.latent_channels: int = int(self._unet.config.in_channels)
        self.vae_scale_factor: int = self._vae_scale_factor()
        self._scaling_factor = float(getattr(self._vae.config, "scaling_factor", 1.0))
        if shapes.width % self.vae_scale_factor or shapes.height % self.vae_scale_factor:
            raise ModelError(
                f"{shapes.width}x{shapes.height} is not a multiple of {self.vae_scale_factor}; pick such a resolution")
        self._cross_kv = CrossAttentionKV.install(self._unet) if cross_attention_kv else None
        if self.device.type == "cuda":  # convolutions run faster in NHWC on tensor cores
            self._unet.to(memory_format=torch.channels_last)
            self._vae.to(memory_format=torch.channels_last)

    def _vae_scale_factor(self) -> int:
        config = self._vae.config
        if self._vae_is_tiny:
            return int(config.upsampling_scaling_factor) ** (len(config.encoder_block_out_channels) - 1)
        return 2 ** (len(config.block_out_channels) - 1)

    def _prepare_thread(self) -> None:
        if self.device.type == "cpu":
            flush_denormals_on_this_thread()  # the calling thread may be new (pipeline, bench): see engines.devices

    def _to_input(self, tensor: torch.Tensor) -> torch.Tensor:
        self._prepare_thread()
        return tensor.to(device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def encode_prompt(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) texts -> (N, 77, embed_dim): tokens padded / truncated to 77, last hidden state of the encoder."""
        self._prepare_thread()
        tokens = self._tokenizer(
            list(texts), padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)  # (N, 77)
        return self._text_encoder(tokens).last_hidden_state  # (N, 77, D)

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8) scaled latents; the posterior mean keeps it deterministic."""
        images = self._to_input(images)
        if self._vae_is_tiny:
            return self._vae.encode(images).latents  # TAESD latents are already on the scaled-latent scale
        return self._vae.encode(images).latent_dist.mean * self._scaling_factor

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) scaled latents -> (B, 3, 8h, 8w), clamped to [-1, 1]."""
        latents = self._to_input(latents)
        if not self._vae_is_tiny:
            latents = latents / self._scaling_factor
        return self._vae.decode(latents).sample.clamp(-1.0, 1.0)

    @torch.inference_mode()
    def predict_noise(
        self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor
    ) -> torch.Tensor:
        """UNet: (B, 4, h, w), (B,) timesteps, (B, 77, D) embeddings -> (B, 4, h, w) epsilon (or v)."""
        embeddings = self._to_input(embeddings)
        if self._cross_kv is not None:
            self._cross_kv.update(embeddings)
        return self._unet(self._to_input(latents), timesteps.to(self.device), encoder_hidden_states=embeddings).sample
