"""Cutting a diffusers `UNet2DConditionModel` into contiguous stages of balanced cost, for several devices.

The UNet's forward is a chain of *units*, found from the model's own blocks (never from a table of model names):

    embed (time embedding, text-embedding projection, conv_in) -> down_0 .. down_{D-1} -> mid -> up_0 .. up_{U-1}
    -> out (norm, activation, conv_out)

What flows between two units is a `StageState`: the hidden state, the skip connections the down blocks produced
that no up block has consumed yet, the time embedding and the text embeddings. That is exactly what crosses a
cut between two devices, and nothing else. Running the units in order repeats diffusers'
`UNet2DConditionModel.forward` (diffusers 0.42, `models/unets/unet_2d_condition.py`) call for call, so the stages
in sequence give the UNet's output bit for bit in fp32 (plain SD 1.x / 2.x UNets: no ControlNet residuals, no
class labels, no added conditions).

A split is chosen from measured unit costs (`measure_unit_costs`) by `balanced_cuts`: the contiguous partition
into N stages whose most expensive stage is cheapest (the classic linear-partition dynamic programme).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from engines.base import ModelError


@dataclass(frozen=True)
class StageState:
    """What crosses a cut. Shapes for a UNet batch B at latent size h x w:

    sample (B, C_k, h_k, w_k) the hidden state; residuals: the pending skip connections, oldest first (the first
    is conv_in's output at h x w until the last up block consumes it); emb (B, E) the time embedding; context
    (B, tokens, D) the text embeddings. Before the embed unit (a stage-0 input) `sample` holds the latents
    (B, 4, h, w), `emb` the timesteps (B,) and `residuals` is empty.
    """

    sample: torch.Tensor
    residuals: tuple[torch.Tensor, ...]
    emb: torch.Tensor
    context: torch.Tensor

    @classmethod
    def inputs(cls, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> "StageState":
        """The state before the first unit: the UNet's own inputs."""
        return cls(sample=latents, residuals=(), emb=timesteps, context=embeddings)

    def tensors(self) -> list[torch.Tensor]:
        """Flat list for transport: [sample, emb, context, *residuals]."""
        return [self.sample, self.emb, self.context, *self.residuals]

    def activations(self) -> list[torch.Tensor]:
        """What a cut transports on every call: [sample, *residuals]. The embeddings are the same for every call of
        one prompt and one batch layout, so they travel only when they change (see engines.stage_worker)."""
        return [self.sample, *self.residuals]

    @classmethod
    def from_tensors(cls, tensors: Sequence[torch.Tensor]) -> "StageState":
        """Inverse of `tensors`."""
        return cls(sample=tensors[0], emb=tensors[1], context=tensors[2], residuals=tuple(tensors[3:]))

    def nbytes(self) -> int:
        """Bytes this state occupies in transit."""
        return sum(t.numel() * t.element_size() for t in self.tensors())


Unit = Callable[[StageState], StageState]


def _check_supported(unet: Any) -> None:
    config = unet.config
    unsupported = {
        "class_embed_type": config.class_embed_type, "num_class_embeds": config.num_class_embeds,
        # "text" (the pooled prompt added to the time embedding) needs nothing but the prompt: supported
        "addition_embed_type": None if config.addition_embed_type == "text" else config.addition_embed_type,
    }
    used = [f"{key}={value!r}" for key, value in unsupported.items() if value is not None]
    if used:
        raise ModelError(f"this UNet needs extra conditioning ({', '.join(used)}); several devices support plain "
                         "SD 1.x / 2.x UNets only: run it on one device")


LAYERED_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")


def _freeu_enabled(block: Any) -> bool:
    return all(getattr(block, name, None) for name in ("s1", "s2", "b1", "b2"))


class UNetUnits:
    """The UNet's forward as a list of named units over `StageState` (see the module docstring).

    The standard SD blocks (`LAYERED_BLOCKS`) are cut finer, one unit per resnet and one per attention and one per
    down/up sampler, repeating those blocks' own forward; a high-resolution up block alone can cost 40% of the
    UNet, so block granularity could not balance three stages. Any other block is one unit, run as a whole.
    """

    def __init__(self, unet: Any) -> None:
        _check_supported(unet)
        self.unet = unet
        self.names: list[str] = ["embed"]
        self.units: list[Unit] = [self._embed]
        for index, block in enumerate(unet.down_blocks):
            self._add_down_block(f"down_{index}", block)
        if unet.mid_block is not None:
            self._add("mid", self._mid)
        for index, block in enumerate(unet.up_blocks):
            self._add_up_block(f"up_{index}", block, is_final=index == len(unet.up_blocks) - 1)
        self._add("out", self._out)

    def __len__(self) -> int:
        return len(self.units)

    def _add(self, name: str, unit: Unit) -> None:
        self.names.append(name)
        self.units.append(unit)

    def run(self, state: StageState, first: int = 0, end: int | None = None) -> StageState:
        """Run units first..end-1 on `state` (no autograd)."""
        with torch.inference_mode():
            for unit in self.units[first:end]:
                state = unit(state)
        return state

    # --- the units: the lines of UNet2DConditionModel.forward and of its blocks' forward, in their order -------
    def _embed(self, state: StageState) -> StageState:
        unet, sample, timesteps, context = self.unet, state.sample, state.emb, state.context
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timesteps), None)
        if unet.config.addition_embed_type == "text":
            emb = emb + unet.add_embedding(context)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        context = unet.process_encoder_hidden_states(encoder_hidden_states=context, added_cond_kwargs=None)
        sample = unet.conv_in(sample)
        return StageState(sample=sample, residuals=(sample,), emb=emb, context=context)

    @staticmethod
    def _attend(attention: Any, sample: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return attention(sample, encoder_hidden_states=context, cross_attention_kwargs=None, attention_mask=None,
                         encoder_attention_mask=None, return_dict=False)[0]

    def _add_down_block(self, name: str, block: Any) -> None:
        if type(block).__name__ not in LAYERED_BLOCKS:
            self._add(name, self._whole_down_block(block))
            return
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for index, (resnet, attention) in enumerate(zip(block.resnets, attentions)):
            if attention is None:
                self._add(f"{name}.{index}", self._down_layer(resnet, keep=True))
            else:  # resnet and attention apart: at full resolution either can outweigh a whole stage's share
                self._add(f"{name}.{index}", self._down_layer(resnet, keep=False))
                self._add(f"{name}.{index}.attn", self._attention(attention, keep=True))
        if block.downsamplers is not None:
            self._add(f"{name}.down", self._downsample(block.downsamplers))

    @staticmethod
    def _down_layer(resnet: Any, keep: bool) -> Unit:
        """A down block's resnet; `keep` makes its output a skip connection (no attention follows it)."""
        def layer(state: StageState) -> StageState:
            sample = resnet(state.sample, state.emb)
            return StageState(sample, state.residuals + ((sample,) if keep else ()), state.emb, state.context)

        return layer

    def _attention(self, attention: Any, keep: bool) -> Unit:
        """A transformer after a resnet; `keep` makes its output a skip connection (down blocks)."""
        def layer(state: StageState) -> StageState:
            sample = self._attend(attention, state.sample, state.context)
            return StageState(sample, state.residuals + ((sample,) if keep else ()), state.emb, state.context)

        return layer

    @staticmethod
    def _downsample(samplers: Any) -> Unit:
        def downsample(state: StageState) -> StageState:
            sample = state.sample
            for sampler in samplers:
                sample = sampler(sample)
            return StageState(sample, state.residuals + (sample,), state.emb, state.context)

        return downsample

    @staticmethod
    def _whole_down_block(block: Any) -> Unit:
        def down(state: StageState) -> StageState:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=state.sample, temb=state.emb, encoder_hidden_states=state.context,
                                    attention_mask=None, cross_attention_kwargs=None, encoder_attention_mask=None)
            else:
                sample, res = block(hidden_states=state.sample, temb=state.emb)
            return StageState(sample, state.residuals + tuple(res), state.emb, state.context)

        return down

    def _mid(self, state: StageState) -> StageState:
        block = self.unet.mid_block
        if getattr(block, "has_cross_attention", False):
            sample = block(state.sample, state.emb, encoder_hidden_states=state.context, attention_mask=None,
                           cross_attention_kwargs=None, encoder_attention_mask=None)
        else:
            sample = block(state.sample, state.emb)
        return StageState(sample, state.residuals, state.emb, state.context)

    def _upsample_size(self, residuals: tuple[torch.Tensor, ...], is_final: bool) -> Any:
        """forward() passes the next skip's size when the latent size is not a multiple of the total up factor;
        the first pending residual is conv_in's output, i.e. at latent size, until the final block."""
        factor = 2 ** self.unet.num_upsamplers
        if is_final or not any(dim % factor for dim in residuals[0].shape[-2:]):
            return None
        return residuals[-1].shape[2:]

    def _add_up_block(self, name: str, block: Any, is_final: bool) -> None:
        if type(block).__name__ not in LAYERED_BLOCKS or _freeu_enabled(block):
            self._add(name, self._whole_up_block(block, is_final))
            return
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for index, (resnet, attention) in enumerate(zip(block.resnets, attentions)):
            self._add(f"{name}.{index}", self._up_layer(resnet))
            if attention is not None:
                self._add(f"{name}.{index}.attn", self._attention(attention, keep=False))
        if block.upsamplers is not None:
            self._add(f"{name}.up", self._upsample(block.upsamplers, is_final))

    @staticmethod
    def _up_layer(resnet: Any) -> Unit:
        """An up block's resnet: it consumes the newest pending skip connection."""
        def layer(state: StageState) -> StageState:
            sample = resnet(torch.cat([state.sample, state.residuals[-1]], dim=1), state.emb)
            return StageState(sample, state.residuals[:-1], state.emb, state.context)

        return layer

    def _upsample(self, samplers: Any, is_final: bool) -> Unit:
        def upsample(state: StageState) -> StageState:
            size = self._upsample_size(state.residuals, is_final)
            sample = state.sample
            for sampler in samplers:
                sample = sampler(sample, size)
            return StageState(sample, state.residuals, state.emb, state.context)

        return upsample

    def _whole_up_block(self, block: Any, is_final: bool) -> Unit:
        def up(state: StageState) -> StageState:
            count = len(block.resnets)
            consumed, pending = state.residuals[-count:], state.residuals[:-count]
            size = self._upsample_size(state.residuals[:1] + pending, is_final) if pending else None
            if getattr(block, "has_cross_attention", False):
                sample = block(hidden_states=state.sample, temb=state.emb, res_hidden_states_tuple=consumed,
                               encoder_hidden_states=state.context, cross_attention_kwargs=None,
                               upsample_size=size, attention_mask=None, encoder_attention_mask=None)
            else:
                sample = block(hidden_states=state.sample, temb=state.emb, res_hidden_states_tuple=consumed,
                               upsample_size=size)
            return StageState(sample, pending, state.emb, state.context)

        return up

    def _out(self, state: StageState) -> StageState:
        unet, sample = self.unet, state.sample
        if unet.conv_norm_out:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        return StageState(unet.conv_out(sample), (), state.emb, state.context)


def measure_unit_costs(
    units: UNetUnits, inputs: StageState, repeats: int = 3, synchronize: Callable[[], None] | None = None
) -> list[float]:
    """Seconds per unit on the units' device: the fastest of `repeats` timed passes after one untimed pass.

    The fastest, not the median: another process can only add time to a pass, so on a busy machine the median of
    a few passes still took the interruptions of two of them (a 3-stage split of the tiny UNet came out 42 % in one
    stage, against 33 % measured quietly), and the cuts follow the costs.

    `synchronize` (e.g. torch.cuda.synchronize) is called around each unit so GPU time is not hidden by
    asynchronous launches.
    """
    sync = synchronize or (lambda: None)
    samples: list[list[float]] = [[] for _ in units.units]
    units.run(inputs)  # first pass: allocator and kernel selection
    for _ in range(repeats):
        state = inputs
        with torch.inference_mode():
            for index, unit in enumerate(units.units):
                sync()
                start = time.perf_counter()
                state = unit(state)
                sync()
                samples[index].append(time.perf_counter() - start)
    return [min(values) for values in samples]


def balanced_cuts(costs: Sequence[float], stages: int) -> list[int]:
    """Contiguous cuts of `costs` into `stages` parts minimising the most expensive part.

    Returns the boundaries [0, c_1, ..., len(costs)]: stage k runs units boundaries[k]..boundaries[k+1]-1.
    Exact dynamic programme over prefix sums, O(stages * n^2) for n units (n is ~10-20).
    """
    n = len(costs)
    if not 1 <= stages <= n:
        raise ValueError(f"cannot cut {n} units into {stages} stages; use between 1 and {n} stages")
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + cost)
    inf = float("inf")
    # best[k][i]: the smallest possible maximum stage cost for the first i units in k stages
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut_at = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for i in range(k, n - (stages - k) + 1):
            for j in range(k - 1, i):
                candidate = max(best[k - 1][j], prefix[i] - prefix[j])
                if candidate < best[k][i]:
                    best[k][i], cut_at[k][i] = candidate, j
    boundaries = [n]
    for k in range(stages, 0, -1):
        boundaries.append(cut_at[k][boundaries[-1]])
    return boundaries[::-1]


def stage_costs(costs: Sequence[float], boundaries: Sequence[int]) -> list[float]:
    """Sum of unit costs per stage for the given boundaries."""
    return [sum(costs[a:b]) for a, b in zip(boundaries[:-1], boundaries[1:])]
