"""`StreamConfig`: every setting of the stream-batch core, frozen and passed explicitly."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

GuidanceMode = Literal["none", "full", "self", "initialize"]
GUIDANCE_MODES: tuple[str, ...] = ("none", "full", "self", "initialize")
SchedulerName = Literal["lcm", "ddim", "dpmsolver++"]
SCHEDULERS: tuple[str, ...] = ("lcm", "ddim", "dpmsolver++")


class ConfigError(ValueError):
    """A setting out of range; the message names the setting and the allowed values."""


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None,
            high_excluded: bool = False, cli: str | None = None, preset: bool = True, old: str | None = None,
            old_cli: str | None = None, metavar: str | None = None, flag: Any = None) -> Any:
    """A dataclass field that users set: this one declaration is its preset key, its command-line option, its
    `--help` line and its row in the README (vcam generates all four from the field; core never reads them).

    `help` is the one-line meaning; `low`/`high` the allowed range (inclusive; `high_excluded` leaves `high`
    itself out, for a bound a formula divides by); `cli` replaces the option name derived from the field name
    ("" = not on the command line); `preset=False` keeps it out of preset files;
    `old`/`old_cli` are a previous preset key / option still accepted for one release with a notice; `flag`
    makes the option a switch that sets this value; `metavar` names the value in `--help`.
    """
    metadata = {"help": help, "range": (low, high), "high_excluded": high_excluded, "cli": cli, "preset": preset,
                "old": old, "old_cli": old_cli, "metavar": metavar, "flag": flag}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are shared between instances; use a tuple or a mapping proxy")
    return field(default=default, metadata=metadata)


def range_problem(value: Any, metadata: Any) -> str | None:
    """What is wrong with `value` against a `setting`'s range ("must be from 0.0 to 1.0, got 1.5"), or None.
    The schema's validator and a core dataclass's own check both ask this, so a range is written once."""
    low, high = metadata.get("range", (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            return f"must be at least {low}, got {value}"
        if low is None:
            return f"must be at most {high}, got {value}"
        return f"must be from {low} to {high}, got {value}"
    if metadata.get("high_excluded") and value == high:
        return f"must be below {high}, got {value}"
    return None


def check_ranges(instance: Any, owner: str) -> None:
    """Raise `ConfigError` naming `owner` and the field for the first field of `instance` out of its range."""
    for f in dataclasses.fields(instance):
        problem = range_problem(getattr(instance, f.name), f.metadata)
        if problem:
            raise ConfigError(f"{owner} {f.name} {problem}")


def stream_steps(scheduler: str, strength: float | None, steps: int | None,
                 default_steps: int | None = None) -> dict[str, Any]:
    """The StreamConfig fields the img2img `strength` + `steps` knob sets, by scheduler.

    lcm: `t_index_list` on the consistency grid (`steps` slots; see `t_index_list_from_strength`). ddim /
    dpmsolver++: `num_inference_steps` = steps and `strength`, of which img2img runs the last int(steps *
    strength), as diffusers' StableDiffusionImg2ImgPipeline does. Missing values: strength 0.5, `default_steps`,
    else StreamConfig's own default for the scheduler (lcm: as many as its default t_index_list has).
    """
    strength = 0.5 if strength is None else strength
    if default_steps is None:
        default_steps = len(StreamConfig.t_index_list) if scheduler == "lcm" else StreamConfig.num_inference_steps
    steps = default_steps if steps is None else steps
    if scheduler == "lcm":
        return {"t_index_list": t_index_list_from_strength(strength, steps)}
    return {"num_inference_steps": steps, "strength": strength}


def t_index_list_from_strength(strength: float, steps: int, grid_steps: int = 50) -> tuple[int, ...]:
    """Map the img2img `strength` + `steps` knob onto indices of the `grid_steps`-long consistency schedule.

    strength 1.0 starts at the noisiest timestep (index 0); strength s starts at index round(grid*(1-s)) and the
    `steps` indices are spread evenly from there to the clean end, as a sequential img2img of that strength would.
    """
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"strength (--strength) must be in (0, 1], got {strength}")
    if steps < 1:
        raise ConfigError(f"steps (--steps) must be at least 1, got {steps}")
    start = grid_steps * (1.0 - strength)
    span = grid_steps * strength
    indices = [min(grid_steps - 1, int(round(start + i * span / steps))) for i in range(steps)]
    for i in range(1, len(indices)):  # keep strictly increasing even for many steps at low strength
        indices[i] = max(indices[i], indices[i - 1] + 1)
    if indices[-1] > grid_steps - 1:
        raise ConfigError(f"{steps} steps do not fit in strength {strength}; "
                          "use fewer steps (--steps) or more strength (--strength)")
    return tuple(indices)


@dataclass(frozen=True)
class StreamConfig:
    """The stream-batch settings; `t_index_list`, or the preset's `strength` + `steps`, picks the denoising slots.

    `t_index_list` indexes a `grid_steps`-long consistency (LCM) timestep grid: index 0 is t=999 (pure noise),
    index grid_steps-1 the least noisy; slot i of the stream batch sits at t_index_list[i]. This dataclass is also
    the preset's [stream] section and the CLI's stream options (see `setting`); its defaults are the product's.
    """

    width: int = setting(512, "model input width in pixels (multiple of 8)", low=64, high=2048)
    height: int = setting(512, "model input height in pixels (multiple of 8)", low=64, high=2048)
    t_index_list: tuple[int, ...] = setting(
        (32, 45), "denoising slots as indices of the 50-step grid (or --strength with --steps)", metavar="I,J,...")
    grid_steps: int = field(default=50, metadata={"internal": True})
    frame_buffer_size: int = setting(1, "frames per UNet call (F)", low=1, high=16, old="frame_buffer",
                                     old_cli="--frame-buffer")
    guidance: GuidanceMode = setting("none", "residual classifier-free guidance (RCFG) mode", old_cli="--cfg")
    guidance_scale: float = setting(1.2, "guidance scale (RCFG does nothing at <= 1)", low=0.0, high=20.0)
    delta: float = setting(1.0, "RCFG virtual residual noise weight", low=0.0, high=10.0)
    seed: int = setting(2, "seed of the fixed stream noise", low=0, high=2**32 - 1)
    mode: Literal["img2img", "txt2img"] = setting(
        "img2img", "txt2img ignores the camera picture: a text-to-image stream", cli="--txt2img", flag="txt2img")
    prompt: str = setting("a watercolor painting", "prompt text (put first, before the preset's prompts)",
                          preset=False)
    negative_prompt: str = setting("", "negative prompt used by RCFG full / initialize")
    # The solver. `lcm` is the one-step consistency update on the t_index_list grid (distilled models); `ddim` and
    # `dpmsolver++` integrate the probability-flow ODE over `num_inference_steps` steps of their own schedule
    # (any epsilon / v model), of which img2img runs the last int(num_inference_steps * strength) as diffusers'
    # StableDiffusionImg2ImgPipeline does, and txt2img all. `ddim` is order 1 of the same multistep code.
    # Users set num_inference_steps and strength with --steps / --strength (see `stream_steps`).
    scheduler: SchedulerName = setting(
        "lcm", "lcm: one-step consistency (distilled models: sd-turbo, LCM); ddim | dpmsolver++: any SD model")
    num_inference_steps: int = field(default=10, metadata={"internal": True})
    strength: float = field(default=1.0, metadata={"internal": True})
    solver_order: int = setting(2, "dpmsolver++ order: 1, 2 (2M) or 3 (3M)", low=1, high=3)
    use_karras_sigmas: bool = setting(False, "ddim / dpmsolver++: Karras et al. (2022) sigma spacing",
                                      cli="--karras")
    lower_order_final: bool = setting(True, "dpmsolver++: first order at the last step when fewer than 15 steps "
                                      "(as diffusers)")

    def __post_init__(self) -> None:
        if self.width % 8 or self.height % 8 or self.width <= 0 or self.height <= 0:
            raise ConfigError(f"width and height must be positive multiples of 8, got {self.width}x{self.height}")
        if not self.t_index_list:
            raise ConfigError("t_index_list needs at least one index, "
                              "e.g. t_index_list = [32, 45] (--t-index-list 32,45)")
        if any(not 0 <= t < self.grid_steps for t in self.t_index_list):
            raise ConfigError(f"t_index_list values must be in 0..{self.grid_steps - 1}, got {list(self.t_index_list)}")
        if list(self.t_index_list) != sorted(set(self.t_index_list)):
            raise ConfigError(f"t_index_list must be strictly increasing, got {list(self.t_index_list)}")
        if self.frame_buffer_size < 1:
            raise ConfigError(f"frame_buffer_size must be at least 1, got {self.frame_buffer_size}")
        if self.guidance not in GUIDANCE_MODES:
            raise ConfigError(f"guidance must be one of {', '.join(GUIDANCE_MODES)}, got {self.guidance!r}")
        if self.mode not in ("img2img", "txt2img"):
            raise ConfigError(f"mode must be img2img or txt2img, got {self.mode!r}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.scheduler != "lcm":
            self._check_solver()

    def _check_solver(self) -> None:
        if not 1 <= self.num_inference_steps <= 1000:
            raise ConfigError(f"steps (--steps) must be in 1..1000 for {self.scheduler}, "
                              f"got {self.num_inference_steps}")
        if not 0.0 < self.strength <= 1.0:
            raise ConfigError(f"strength (--strength) must be in (0, 1], got {self.strength}")
        if self.mode == "img2img" and int(self.num_inference_steps * self.strength) < 1:
            raise ConfigError(f"strength {self.strength} runs no step of {self.num_inference_steps}; "
                              "raise strength (--strength) or steps (--steps)")
        if self.solver_order not in (1, 2, 3):
            raise ConfigError(f"solver_order (--solver-order) must be 1, 2 or 3, got {self.solver_order}")
        if self.guidance_active and self.guidance in ("self", "initialize"):
            raise ConfigError(f"guidance {self.guidance} works only with scheduler lcm; "
                              f"use guidance full (or none) with {self.scheduler} (--guidance, --scheduler)")

    @property
    def steps(self) -> int:
        """T: denoising steps, i.e. slots of the stream batch (for ddim / dpmsolver++ img2img: the tail of
        num_inference_steps that strength selects, int(steps * strength), as diffusers' img2img)."""
        if self.scheduler == "lcm":
            return len(self.t_index_list)
        if self.mode == "txt2img":
            return self.num_inference_steps
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)

    @property
    def effective_solver_order(self) -> int:
        """The multistep order asked for: 1 for ddim (DDIM is first-order DPM-Solver++), solver_order otherwise."""
        return 1 if self.scheduler == "ddim" else self.solver_order

    @property
    def guidance_active(self) -> bool:
        """RCFG changes nothing at scale <= 1, so every mode then behaves as `none` (no extra UNet work)."""
        return self.guidance != "none" and self.guidance_scale > 1.0

    def ineffective_settings(self) -> tuple[str, ...]:
        """One line for each setting given here that changes nothing or runs as something else, for the caller to
        say once (at start-up, and when a preset is validated). RCFG (Kai et al. 2023, StreamDiffusion) uses the
        negative prompt only in `full` and `initialize`, and does nothing at a scale <= 1."""
        notes = []
        if self.guidance != "none" and not self.guidance_active:
            notes.append(f"guidance {self.guidance} at guidance scale {self.guidance_scale:g} runs as none (guidance "
                         "does nothing at a scale <= 1): raise the guidance scale above 1, or choose guidance none")
        if self.negative_prompt.strip():
            if not self.guidance_active:
                why = (f"guidance scale {self.guidance_scale:g} <= 1" if self.guidance != "none"
                       else "guidance none")
                notes.append(f"the negative prompt has no effect at {why}: only guidance full or initialize at a "
                             "scale above 1 uses it")
            elif self.guidance == "self":
                notes.append("the negative prompt has no effect with guidance self (it guides away from the "
                             "stream's own noise): only guidance full or initialize uses it")
        return tuple(notes)

    @property
    def unet_batch(self) -> int:
        """Batch of one UNet call: T*F, 2*T*F for full, (T+1)*F for initialize."""
        t, f = self.steps, self.frame_buffer_size
        if not self.guidance_active:
            return t * f
        return {"none": t * f, "self": t * f, "full": 2 * t * f, "initialize": (t + 1) * f}[self.guidance]


@dataclass(frozen=True)
class SimilarityFilterConfig:
    """The stochastic similarity filter: skip the UNet when the camera image barely changed.

    This dataclass is also the preset's [filter] section and the CLI's --ssf options (see `setting`), so its
    defaults and ranges are the product's and are written once. `threshold`: cosine at and below which a frame is
    always processed (below 1: the skip probability divides by 1 - threshold); `max_skip`: longest run of skips;
    `seed`: the skip draws' own random stream (a run takes the stream's seed).
    """

    enabled: bool = setting(False, "the similarity filter (--no-ssf processes every frame)", cli="--ssf")
    threshold: float = setting(0.98, "cosine similarity above which frames may be skipped (below 1)", low=0.0,
                               high=1.0, high_excluded=True)
    # no upper bound: a larger max_skip only refreshes a perfectly still scene less often
    max_skip: int = setting(10, "at most this many skipped frames in a row", low=0)
    seed: int = field(default=0, metadata={"internal": True})

    def __post_init__(self) -> None:
        check_ranges(self, "similarity")
