"""Train the `tiny` model on the CPU: a TAESD-shaped autoencoder, then a small UNet + CLIP text encoder.

    python bench/train_tiny.py                       # writes engines/tiny/weights
    python bench/train_tiny.py --processes 1        # one process (two one-thread processes are the default)
    python bench/train_tiny.py --checkpoint ck.pt    # resumes from ck.pt if it exists (same seed, same result)

Three phases, each resumable from the checkpoint (saved every `--save-every` steps, written atomically):
1. Autoencoder (diffusers AutoencoderTiny, 4 latent channels, scale factor 4: TAESD's blocks, one halving fewer;
   `--ae-scale-factor 8` and `--ae-channels` change its shape, README "The trained tiny model" has what they gave; at
   8 no UNet can keep the shapes the structure specs ask for) on random 128x128 views of the
   training photos and of their styled versions (the decoder must be able to draw a sketch and neon, not only
   photos). Loss: L1 + MSE on pixels. The decoder sees the latents normalised per channel by running statistics
   (mean 0 / std 1, the scale SD's noise schedule assumes: with the ~0.25 std an unconstrained encoder gave,
   t = 339 already drowned the picture), folded into the encoder at the end; a term keeps the raw latents near
   that scale; most rows are decoded from noised and blurred latents, because at run time the decoder gets the
   UNet's x0-prediction, never an exact encoding. The weights that ship are an exponential moving average.
2. A bank of latents: `--bank` random 256x256 views (the preset's size), each encoded as photo and as every style
   (frozen encoder).
3. UNet2DConditionModel (epsilon prediction, SD `scaled_linear` betas, 1000 steps) + the CLIP text encoder,
   jointly, on two terms per batch of 16 (`--translation-rows`: 12 of them on (b)), each row a random 32x32 crop
   of its bank latents (`--unet-crop`: the styles are local, and a quarter of the cells is a quarter of the cost,
   so the same minutes see four times the rows):
   (a) the standard DDPM epsilon loss on *styled* latents with the style's prompt, t uniform in 0..999
       (`--eps-preset-share` of the rows at the preset's timesteps instead, where the stream's 2nd..4th slots
       denoise a styled x0), so the model is a proper denoiser of styled pictures and many-step samplers (DDIM,
       DPM-Solver++) converge on it;
   (b) an img2img "translation" term: x_t is made from the *photo's* latent, and the target is the epsilon that
       makes the x0-prediction equal the *styled* latent, eps* = (x_t - sqrt(abar_t) z_style) / sqrt(1 - abar_t).
       It is weighted as an x0 loss ||x0_pred - z_style||^2 (the LCM step the stream uses returns ~x0_pred at
       the preset timesteps, c_skip ~ 0 there), with t drawn from the small-noise end of the grid (t = 19..139,
       `--translation-t-range`; `--preset-share` of the rows exactly at the tiny preset's t = 39 and at t = 19).
       This is what makes one img2img step restyle a camera frame. Why the small-noise end: at SNR ~1 (t = 359,
       the usual first slot of LCM presets) the best a squared error can do is the posterior mean, a blurred
       picture; at t = 39 the photo is intact and the x0-prediction is a sharp restyling.
       `--translation-snr-cap` and `--translation-style-balance` reweight its rows (by timestep and by style).
       `--translation-gradient-weight` adds the error of the x0-prediction's horizontal and vertical differences
       (its edges), so the restyled picture keeps the photo's fine structure instead of the smoother posterior
       mean; neon glow's rows are exempt (`--gradient-exempt-prompts`: its gray structure was worse with it). Off
       in the shipped recipe: it brought the negative to its structure margin but cost neon glow its own.
   The UNet hears the prompt in every layer (`--text-time-embedding`, `--time-scale-shift`, see build_unet): what
   made the negative keep the photo's shapes.
   `--blend-share` of the rows are prompt blends (see train_unet). The defaults are the recipe of the shipped
   weights; README "The trained tiny model" has what the other options gave.
   Why both: (b) alone teaches only "photo in, style out" and leaves the model undefined on its own styled
   outputs (the 2nd..4th stream steps re-noise a styled x0) and on pure noise; (a) alone is a denoiser of
   styled pictures that at small t just returns the (unstyled) photo. Together, the x0 prediction is "the
   styled version of the underlying picture", whether that picture is a photo or already styled.
   The identity prompt ("photograph") and the empty prompt map a photo to itself (the empty prompt is also
   the negative prompt of RCFG, so guidance pushes away from the unstyled photo).
Seeded per step (numpy and torch generators built from (seed, phase, step)), so a resumed run equals an
uninterrupted one. At the end the weights are written as an fp16 diffusers folder and `bench/tiny_figures.py`
prints the quality figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.schedule import alphas_cumprod  # noqa: E402
from engines.base import NoiseScheduleConfig  # noqa: E402
from engines.tiny.photos import TRAINING_PHOTOS, load_photo, random_view  # noqa: E402
from engines.tiny.styles import TRAINING_PROMPTS  # noqa: E402

CONFIGS = ROOT / "engines" / "configs" / "tiny"
WEIGHTS = ROOT / "engines" / "tiny" / "weights"
PROMPTS = list(TRAINING_PROMPTS)  # index k <-> prompt text; styles first, then "photograph", then ""
# Training view sides in pixels. The networks are convolutional, so any size runs, but a view must be larger than
# the autoencoder's receptive field: trained on 64x64 views (every latent near the zero padding), it reconstructed
# 64x64 crops at 24 dB and whole 256x256 pictures at 12 dB.
# The bank holds views at the tiny preset's size (256x256 pixels, 64x64 latents); the UNet trains on 32x32 crops of
# them (`--unet-crop`; a quarter of the cost per row). An earlier UNet trained on 16x16 latents of an 8x autoencoder
# only drew seams and blotches at 32x32: its whole view was a handful of cells, every one near the zero padding.
AE_SIZE, UNET_SIZE = 128, 256
# The translation rows' timesteps: the small-noise end of the grid (LCM indices 43..49), where the tiny preset's slot
# is. At the preset's former t = 359 (signal-to-noise 0.97) a squared-error model can only return the posterior mean,
# a blurred picture; at t = 39 the photo is all there and the x0-prediction can be sharp (README "The trained tiny
# model" has both runs' figures).
TRANSLATION_T_RANGE = (19, 139)
# The tiny preset's slot (t_index_list [48]: t = 999 - 20 * 48) and the next, [49]: `--preset-share` of the
# translation rows and `--eps-preset-share` of the epsilon rows are drawn exactly there. (19, 39) kept more of the
# negative's and neon's shapes at [48] than (59, 39) did, the same run otherwise: README "The trained tiny model".
PRESET_TIMESTEPS = (19, 39)


def build_autoencoder(channels: int = 24, scale_factor: int = 8):
    """TAESD's shape (AutoencoderTiny, 4 latent channels) at `channels` wide. `scale_factor` pixels per latent cell
    (a power of 2): one block per halving after the first, so 8 (TAESD's) has 4 blocks and 4 (the shipped tiny
    model's, `--ae-scale-factor`'s default) has 3; the engines read the factor from the block count
    (engines.torch_engine)."""
    from diffusers import AutoencoderTiny

    levels = 1 + int(np.log2(scale_factor))
    if 2 ** (levels - 1) != scale_factor or levels < 2:
        raise ValueError(f"autoencoder scale factor {scale_factor} is not a power of 2 >= 2")
    widths = (channels,) * levels
    return AutoencoderTiny(
        encoder_block_out_channels=widths, decoder_block_out_channels=widths,
        num_encoder_blocks=(1,) + (2,) * (levels - 1), num_decoder_blocks=(2,) * (levels - 1) + (1,),
        latent_channels=4)


def build_unet(channels: tuple[int, ...] = (32, 64, 128, 128), full_res_attention: bool = False,
               latent_size: int = UNET_SIZE // 4, text_time_embedding: bool = True, time_scale_shift: bool = True):
    """The tiny UNet, one level per entry of `channels` (shipped: 32/64/128/128 on 64x64 latents). Attention (self
    and cross) at the levels between the first and the last whose side is at most 16 latents, and at the first with
    `full_res_attention`; the middle block always attends. So 3 levels on 32x32 latents attend at 16x16 (and 32x32),
    and 4 levels on the 64x64 latents of a scale-factor-4 autoencoder at 16x16 only: the same layout over the same
    pixels. Attention over the 32x32 = 1024 positions takes two thirds of a training step (0.85 s against 0.28 s
    without it, 4 rows, one thread).

    `text_time_embedding` (diffusers' addition_embed_type "text": the prompt embeddings attention-pooled and added to
    the time embedding) and `time_scale_shift` (resnet_time_scale_shift "scale_shift": that embedding scales and
    shifts every resnet's features, FiLM) give every layer the prompt. Without them the full-resolution layers,
    which draw the fine texture, hear the prompt only through the up path from the 16x16 blocks that attend to it;
    the negative must turn that texture's sign over, and came out blotchy (README "The trained tiny model")."""
    from diffusers import UNet2DConditionModel

    attends = [level == 0 and full_res_attention or 0 < level < len(channels) - 1 and latent_size >> level <= 16
               for level in range(len(channels))]
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=channels, layers_per_block=1,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)),
        cross_attention_dim=128, attention_head_dim=8, norm_num_groups=16,
        addition_embed_type="text" if text_time_embedding else None, addition_embed_type_num_heads=4,
        resnet_time_scale_shift="scale_shift" if time_scale_shift else "default")


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig.from_pretrained(CONFIGS / "text_encoder"))


def step_rng(seed: int, phase: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent generators per (phase, step): the data a step sees never depends on when the run resumed."""
    torch_seed = seed * 1_000_003 + phase * 100_003 + step
    return np.random.default_rng([seed, phase, step]), torch.Generator().manual_seed(torch_seed)


def styled_views(photos: list[np.ndarray], size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 1 + len(PROMPTS) - 2, size, size, 3): each random view as the photo, then every style."""
    styles = [f for name, f in TRAINING_PROMPTS.items() if name not in ("", "photograph")]
    out = []
    for _ in range(count):
        view = random_view(photos[rng.integers(len(photos))], size, rng)
        out.append([view] + [f(view) for f in styles])
    return np.asarray(out, dtype=np.float32)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) in [0, 1] -> (..., 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).movedim(-1, -3) * 2.0 - 1.0


class WeightAverage:
    """Exponential moving average of a module's weights (the usual way to train diffusion models and their
    autoencoders, e.g. the DDPM and LDM papers): with batches this small the live weights wander by ~1 dB of
    reconstruction PSNR from one step to the next; the average is what ships.

    decay warms up as min(decay, (1 + step) / (10 + step)), so the first steps do not average with the random start.
    """

    def __init__(self, module: torch.nn.Module, decay: float, saved: dict | None = None):
        import copy

        self.decay = decay
        self.average = copy.deepcopy(module).requires_grad_(False)
        if saved is not None:
            self.average.load_state_dict(saved)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        weight = 1.0 - min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.average.parameters()), list(module.parameters()), weight)

    def state_dict(self) -> dict:
        return self.average.state_dict()


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this training process: (0, 1) unless `--processes` started several."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_across_processes(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its mean over the training processes (in place; one all-reduce of the lot). Used
    for the gradients: every process computes its share of the same batch, so after this every process holds the
    whole batch's gradient and takes the same optimizer step."""
    rank, world = process_rank()
    if world == 1:
        return
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def local_rows(batch: int) -> torch.Tensor:
    """Indices of the batch rows this process computes: every world-th row from its rank (interleaved, so each
    process gets an equal share of both halves of a batch)."""
    rank, world = process_rank()
    return torch.arange(rank, batch, world)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically, adding the training time spent since the last save (so resumed runs add up)."""
    now = time.time()
    state["seconds"] = state.get("seconds", 0.0) + now - state.pop("_since", now)
    state["_since"] = now
    if process_rank()[0] != 0:  # the processes hold the same state: one writes it
        return
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_autoencoder(ae, photos, args, state, path) -> None:
    optimizer = torch.optim.AdamW(ae.parameters(), lr=args.ae_lr, weight_decay=0.0)
    if "ae_optimizer" in state:
        optimizer.load_state_dict(state["ae_optimizer"])
    average = WeightAverage(ae, args.ema, state.get("ae_ema"))
    schedule = lambda step: min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / args.ae_steps))  # noqa: E731
    bar = tqdm(range(state.get("ae_step", 0), args.ae_steps), desc="autoencoder", initial=state.get("ae_step", 0),
               total=args.ae_steps, disable=process_rank()[0] != 0)
    for step in bar:
        rng, gen = step_rng(args.seed, 1, step)
        views = styled_views(photos, AE_SIZE, args.ae_batch // 2, rng)  # photo + styles per view
        pick = rng.integers(views.shape[1], size=(views.shape[0], 2))
        batch = to_tensor(np.concatenate([views[np.arange(len(views)), pick[:, 0]],
                                          views[np.arange(len(views)), pick[:, 1]]]))  # (B, 3, 128, 128)
        for group in optimizer.param_groups:
            group["lr"] = args.ae_lr * schedule(step)
        # Decoder robustness: every row but the first is decoded from perturbed latents (white noise of std up to
        # args.ae_noise, and half the rows also blurred by up to args.ae_blur of a 3x3 mean), the kind of error the
        # UNet's x0-prediction makes. Trained on exact latents only, the decoder turned an x0 with 2 % relative
        # error (what the UNet gave at t = 99) into coloured blotches.
        rows = len(batch)
        noise_scale = (torch.rand(rows, generator=gen) * args.ae_noise).view(-1, 1, 1, 1)
        blur_mix = (torch.rand(rows, generator=gen) * args.ae_blur * (torch.rand(rows, generator=gen) < 0.5)).view(
            -1, 1, 1, 1)
        noise_scale[0], blur_mix[0] = 0.0, 0.0
        cells = AE_SIZE // args.ae_scale_factor
        noise = torch.randn((rows, 4, cells, cells), generator=gen)
        mine = local_rows(rows)
        batch, noise, noise_scale, blur_mix = batch[mine], noise[mine], noise_scale[mine], blur_mix[mine]
        raw = ae.encode(batch).latents  # (b, 4, 16, 16), b = this process's share of the batch
        mean, std = raw.detach().mean(dim=(0, 2, 3)), raw.detach().std(dim=(0, 2, 3))  # (4,)
        average_across_processes([mean, std])
        if "ae_mean" not in state:
            state["ae_mean"], state["ae_std"] = mean, std
        state["ae_mean"] = 0.95 * state["ae_mean"] + 0.05 * mean
        state["ae_std"] = 0.95 * state["ae_std"] + 0.05 * std
        latents = (raw - state["ae_mean"].view(1, -1, 1, 1)) / state["ae_std"].view(1, -1, 1, 1)
        blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(latents, (1, 1, 1, 1), mode="replicate"),
                                                 3, stride=1)
        perturbed = latents + blur_mix * (blurred - latents) + noise_scale * noise
        decoded = ae.decode(perturbed).sample  # (b, 3, 128, 128)
        pixel = (decoded - batch).abs().mean() + ((decoded - batch) ** 2).mean()
        # The normalisation makes the pixel loss blind to the encoder's scale, so without this anchor the raw
        # latents drifted to std ~2500 with the running statistics lagging behind (a held-out PSNR that fell as
        # training went on): keep the raw latents near mean 0 / std 1 per channel.
        moments = (raw.mean(dim=(0, 2, 3)) ** 2).mean() + (raw.std(dim=(0, 2, 3)).log() ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        (pixel + args.moments_weight * moments).backward()
        average_across_processes([p.grad for p in ae.parameters() if p.grad is not None])
        optimizer.step()
        average.update(ae, step)
        state["ae_loss"] = pixel.item()
        bar.set_postfix(pixel=f"{pixel.item():.4f}", moments=f"{moments.item():.3f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.ae_steps:
            state.update(ae_step=step + 1, ae=ae.state_dict(), ae_ema=average.state_dict(),
                         ae_optimizer=optimizer.state_dict())
            save_checkpoint(path, state)


@torch.no_grad()
def fold_latent_normalisation(ae, photos, args, state) -> None:
    """Once, at the end of the autoencoder phase: take the averaged weights, measure their latents' mean and std
    per channel on 256 fresh views, and fold (raw - mean) / std into the encoder's last convolution (a linear map,
    so exactly). From then on the encoder itself returns latents of mean 0 / std 1 per channel, the scale SD's noise
    schedule is made for."""
    if state.get("ae_folded"):
        return
    if "ae_ema" in state:
        ae.load_state_dict(state["ae_ema"])
    rng, _ = step_rng(args.seed, 4, 0)
    views = styled_views(photos, AE_SIZE, 64, rng)  # (64, 6, 128, 128, 3)
    pick = views[np.arange(64)[:, None], rng.integers(views.shape[1], size=(64, 4))]  # 4 versions per view
    raw = torch.cat([ae.encode(to_tensor(chunk)).latents for chunk in pick.reshape(-1, 32, AE_SIZE, AE_SIZE, 3)])
    mean, std = raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3))  # (4,)
    conv = [m for m in ae.encoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    conv.weight.div_(std.view(-1, 1, 1, 1))
    conv.bias.copy_((conv.bias - mean) / std)
    state.update(ae=ae.state_dict(), ae_folded=True, ae_mean=mean, ae_std=std)


@torch.no_grad()
def build_bank(ae, photos, args) -> torch.Tensor:
    """(bank, 6, 4, 32, 32) latents: photo then the five styles of each 256x256 view. Every process draws every
    view (the same generator, so the same views); each encodes its share of the chunks, and the shares are joined."""
    rank, world = process_rank()
    rng, _ = step_rng(args.seed, 2, 0)
    chunks = {}
    for index, start in enumerate(tqdm(range(0, args.bank, 32), desc="latent bank", disable=rank != 0)):
        views = styled_views(photos, UNET_SIZE, min(32, args.bank - start), rng)  # (n, 6, 256, 256, 3)
        if index % world != rank:
            continue
        n, k = views.shape[:2]
        latents = ae.encode(to_tensor(views.reshape(n * k, UNET_SIZE, UNET_SIZE, 3))).latents
        chunks[index] = latents.reshape(n, k, *latents.shape[1:])
    if world > 1:
        import torch.distributed as dist

        shares = [None] * world
        dist.all_gather_object(shares, chunks)
        chunks = {index: chunk for share in shares for index, chunk in share.items()}
    return torch.cat([chunks[index] for index in sorted(chunks)])


def latent_crops(batches: list[torch.Tensor], size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """(B, C, H, W) tensors -> (B, C, size, size): row i of every tensor cropped at the same random place.

    Why crops: the styles are local (a colour matrix, edges, 8 px blocks), and a 32x32 crop of the 64x64 latent
    costs a quarter of the whole, so the same minutes see four times the rows. The UNet is convolutional (its
    attention is at 1/4 and 1/8 resolution) and runs on the whole 64x64 latent afterwards."""
    height, width = batches[0].shape[-2:]
    tops = torch.randint(0, height - size + 1, (len(batches[0]),), generator=generator)
    lefts = torch.randint(0, width - size + 1, (len(batches[0]),), generator=generator)
    return [torch.stack([rows[i, :, top:top + size, left:left + size] for i, (top, left)
                         in enumerate(zip(tops.tolist(), lefts.tolist()))]) for rows in batches]


def prompt_tokens(tokenizer) -> torch.Tensor:
    return tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def train_unet(unet, text_encoder, tokens, bank, args, state, path) -> None:
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.0)
    if "unet_optimizer" in state:
        optimizer.load_state_dict(state["unet_optimizer"])
    unet_average = WeightAverage(unet, args.ema, state.get("unet_ema"))
    text_average = WeightAverage(text_encoder, args.ema, state.get("text_encoder_ema"))
    abar = torch.from_numpy(alphas_cumprod(NoiseScheduleConfig())).float()  # (1000,)
    styles = len(PROMPTS) - 2  # bank column s + 1 is style s; column 0 the photo
    bar = tqdm(range(state.get("unet_step", 0), args.unet_steps), desc="unet", initial=state.get("unet_step", 0),
               total=args.unet_steps, disable=process_rank()[0] != 0)
    batch = args.unet_batch
    first_b = batch - args.translation_rows  # rows [0, first_b) are term (a), the rest term (b)
    mine = local_rows(batch)
    mine_a, mine_b = mine[mine < first_b], mine[mine >= first_b]
    preset_t = torch.tensor(args.preset_timesteps)
    # --translation-style-balance: per prompt, the weight that gives every style's translation rows the same loss
    # for "return the photo" (mean latent distance of the styles over this style's, within --style-weight-range;
    # 1 for the two identity prompts). Sepia and pixel art move the latent ~7x and ~5x less than the mean style.
    distance = ((bank[:, 1:] - bank[:, :1]) ** 2).mean(dim=(0, 2, 3, 4))  # (styles,)
    prompt_weight = torch.cat([(distance.mean() / distance).clamp(*args.style_weight_range), torch.ones(2)])
    # --translation-gradient-weight: the x0 error's horizontal and vertical differences, i.e. the error of the
    # picture's edges, on top of the plain error: a squared error on values alone lets the x0-prediction smooth the
    # fine texture the gray SSIM of the structure specs weighs. Neon glow is exempt: its picture *is* edges on
    # black, and with the term its gray structure gap fell in 3 of 3 runs (README "The trained tiny model").
    gradient_prompts = torch.tensor([float(p not in args.gradient_exempt_prompts) for p in PROMPTS])  # (prompts,)
    for step in bar:
        rng, gen = step_rng(args.seed, 3, step)
        rows = torch.from_numpy(rng.integers(len(bank), size=batch))
        # prompt index per row: a style (0..4), the identity prompt (5) or the empty prompt (6)
        prompt = torch.from_numpy(rng.choice(len(PROMPTS), size=batch, p=[0.16] * styles + [0.12, 0.08]))
        column = torch.where(prompt < styles, prompt + 1, torch.zeros_like(prompt))
        target = bank[rows, column]  # (batch, 4, 32, 32): the styled (or identity) latent
        # Prompt blends (a switch with `blend`: the stream moves the text embedding linearly from one prompt to the
        # next): a share of the rows gets the embedding (1 - w) E(prompt) + w E(other) and the same blend of the two
        # styled latents as its picture, so the picture moves steadily with w instead of passing through whatever
        # the UNet makes of an embedding it never saw.
        other, w = prompt, torch.zeros(batch)
        if args.blend_share:  # (drawn only then: with no blends a run draws what the shipped weights' run drew)
            other = torch.from_numpy(rng.choice(len(PROMPTS), size=batch, p=[0.16] * styles + [0.12, 0.08]))
            w = torch.rand(batch, generator=gen) * (torch.rand(batch, generator=gen) < args.blend_share)
            other_target = bank[rows, torch.where(other < styles, other + 1, torch.zeros_like(other))]
            target = target + w.view(-1, 1, 1, 1) * (other_target - target)
        source = torch.cat([target[:first_b], bank[rows[first_b:], 0]])  # (a) styled itself; (b) the photo
        if args.unet_crop:  # a random crop per row, the same for its source and target
            target, source = latent_crops([target, source], args.unet_crop, gen)
        if rng.random() < 0.5:  # flips: the convolutional UNet sees both orientations of every view
            target, source = target.flip(-1), source.flip(-1)
        low, high = args.translation_t_range
        t = torch.cat([torch.randint(0, 1000, (first_b,), generator=gen),
                       torch.randint(low, high + 1, (batch - first_b,), generator=gen)])
        # A share of the rows of each term at exactly the preset's timesteps, where the stream runs the model.
        if args.preset_share or args.eps_preset_share:
            at_preset = torch.rand(batch, generator=gen) < torch.where(torch.arange(batch) < first_b,
                                                                       args.eps_preset_share, args.preset_share)
            t = torch.where(at_preset, preset_t[torch.randint(len(preset_t), (batch,), generator=gen)], t)
        a, b = abar[t].sqrt().view(-1, 1, 1, 1), (1 - abar[t]).sqrt().view(-1, 1, 1, 1)
        noise = torch.randn(source.shape, generator=gen)
        x_t = a * source + b * noise
        for group in optimizer.param_groups:
            group["lr"] = args.unet_lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / args.unet_steps))
        encoded = text_encoder(tokens).last_hidden_state  # (prompts, 77, 128)
        embeddings = torch.lerp(encoded[prompt[mine]], encoded[other[mine]], w[mine].view(-1, 1, 1))  # (b, 77, 128)
        eps = unet(x_t[mine], t[mine], encoder_hidden_states=embeddings).sample  # this process's rows
        eps_a, eps_b = eps[:len(mine_a)], eps[len(mine_a):]
        loss_eps = ((eps_a - noise[mine_a]) ** 2).mean()
        x0 = (x_t[mine_b] - b[mine_b] * eps_b) / a[mine_b]
        error = x0 - target[mine_b]
        weight = torch.ones(len(mine_b), 1, 1, 1)  # per translation row
        if args.translation_snr_cap:  # min-SNR weighting (Hang et al. 2023), see --translation-snr-cap
            weight = weight * (a[mine_b] / b[mine_b]).square().clamp(max=args.translation_snr_cap)
        if args.translation_style_balance:
            weight = weight * prompt_weight[prompt[mine_b]].view(-1, 1, 1, 1)
        loss_x0 = (weight * error ** 2).mean()
        if args.translation_gradient_weight:
            edge_weight = weight * gradient_prompts[prompt[mine_b]].view(-1, 1, 1, 1)
            loss_x0 = loss_x0 + args.translation_gradient_weight * (
                (edge_weight * error.diff(dim=-1) ** 2).mean() + (edge_weight * error.diff(dim=-2) ** 2).mean())
        loss = loss_eps + args.translation_weight * loss_x0
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_across_processes([p.grad for p in params if p.grad is not None])
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        unet_average.update(unet, step)
        text_average.update(text_encoder, step)
        state.update(eps_loss=loss_eps.item(), x0_loss=loss_x0.item())
        bar.set_postfix(eps=f"{loss_eps.item():.4f}", x0=f"{loss_x0.item():.4f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.unet_steps:
            state.update(unet_step=step + 1, unet=unet.state_dict(), text_encoder=text_encoder.state_dict(),
                         unet_ema=unet_average.state_dict(), text_encoder_ema=text_average.state_dict(),
                         unet_optimizer=optimizer.state_dict())
            save_checkpoint(path, state)


def write_model(out: Path, ae, unet, text_encoder) -> None:
    """The weights as an ordinary fp16 diffusers folder (staged, then moved into place)."""
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    for name, module in (("vae", ae), ("unet", unet), ("text_encoder", text_encoder)):
        module.to(torch.float16).save_pretrained(staging / name, safe_serialization=True)
        module.to(torch.float32)
    # diffusers writes AutoencoderTiny's `block_out_channels` too, then warns at every load that the class does not
    # take it: the encoder / decoder widths say it all.
    vae_config = staging / "vae" / "config.json"
    vae_config.write_text(json.dumps({k: v for k, v in json.loads(vae_config.read_text()).items()
                                      if k != "block_out_channels"}, indent=2, sort_keys=True) + "\n")
    shutil.copytree(CONFIGS / "tokenizer", staging / "tokenizer")
    shutil.copytree(CONFIGS / "scheduler", staging / "scheduler")
    index = json.loads((CONFIGS / "model_index.json").read_text())
    index["vae"] = ["diffusers", "AutoencoderTiny"]
    (staging / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)


def build_parser() -> argparse.ArgumentParser:
    """The command line, every option with its help and default (README "The trained tiny model" has the runs)."""
    parser = argparse.ArgumentParser(
        description=f"{__doc__.splitlines()[0]} About 30 minutes on 2 CPU cores; it writes the shipped weights "
                    f"({WEIGHTS.relative_to(ROOT)}) unless --out names another folder. The module's docstring and "
                    "README 'The trained tiny model' explain the recipe.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=WEIGHTS,
                        help="the diffusers folder to write (replaced whole at the end)")
    parser.add_argument("--checkpoint", type=Path, default=Path("tiny-train.ckpt"),
                        help="saved every --save-every steps; a run with the same --seed resumes from it")
    parser.add_argument("--seed", type=int, default=0, help="seeds every phase: the same seed, the same weights")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--ae-steps", type=int, default=1500, help="autoencoder training steps")
    parser.add_argument("--ae-batch", type=int, default=4, help="photo views per autoencoder step")
    parser.add_argument("--ae-lr", type=float, default=1e-3, help="autoencoder learning rate (AdamW)")
    parser.add_argument("--ae-channels", type=int, default=24, help="width of every autoencoder block")
    parser.add_argument("--ae-scale-factor", type=int, default=4, choices=(4, 8),
                        help="pixels per latent cell: 4 (3 blocks, the shipped one: the UNet runs on 64x64 latents "
                             "at 256x256) or 8 (TAESD's, 4 blocks: softer pictures, README 'The trained tiny model')")
    parser.add_argument("--ae-noise", type=float, default=0.2, help="largest std of the noise added to latents")
    parser.add_argument("--ae-blur", type=float, default=0.5, help="largest share of a 3x3 blur mixed into latents")
    parser.add_argument("--moments-weight", type=float, default=0.1,
                        help="weight of the term keeping the raw latents at mean 0 / std 1 per channel")
    parser.add_argument("--bank", type=int, default=512,
                        help="random 256x256 views encoded once (as the photo and every style) for the UNet phase")
    parser.add_argument("--unet-steps", type=int, default=3000, help="UNet + text encoder training steps")
    parser.add_argument("--unet-batch", type=int, default=16, help="rows per UNet step (both terms)")
    parser.add_argument("--unet-crop", type=int, default=32,
                        help="train the UNet on random CROP x CROP latent crops of the 64x64 bank latents (0: whole)")
    parser.add_argument("--unet-lr", type=float, default=1e-3, help="UNet and text encoder learning rate (AdamW)")
    parser.add_argument("--translation-weight", type=float, default=1.0,
                        help="weight of the translation term (b) against the epsilon term (a)")
    parser.add_argument("--translation-gradient-weight", type=float, default=0.0,
                        help="weight of the squared error of the translation x0-prediction's horizontal and vertical "
                             "latent differences (its sharpness), beside the plain x0 error")
    parser.add_argument("--gradient-exempt-prompts", default="neon glow",
                        help="comma-separated prompts whose translation rows get no gradient term")
    parser.add_argument("--translation-rows", type=int, default=12,
                        help="rows of each UNet batch on the translation term (b); the rest on the epsilon term (a)")
    parser.add_argument("--translation-t-range", default=f"{TRANSLATION_T_RANGE[0]},{TRANSLATION_T_RANGE[1]}",
                        help="LOW,HIGH: the translation rows' timesteps are drawn uniformly from LOW..HIGH")
    parser.add_argument("--translation-snr-cap", type=float, default=20.0,
                        help="weight each translation row's x0 loss by min(SNR_t, CAP) (min-SNR weighting; 0: the "
                             "plain x0 loss). At small t an epsilon model must output |z_style - z_photo| / sigma_t "
                             "(4.7 rms for the negative at t = 19), and the plain x0 loss gives those rows the least "
                             "gradient; a cap of 20 weights the rows at the preset's t = 39 as an epsilon loss would")
    parser.add_argument("--translation-style-balance", action=argparse.BooleanOptionalAction, default=True,
                        help="weight each style's translation rows by the mean style's latent distance from the "
                             "photo over this style's (within --style-weight-range): sepia and pixel art barely move "
                             "the latent, so unweighted they are lost in the x0 error and the UNet ignores their "
                             "prompts")
    parser.add_argument("--style-weight-range", default="1,10",
                        help="LOW,HIGH: the range --translation-style-balance's weights are clamped to (with LOW 1 the "
                             "styles that move the latent most, neon and the negative, keep a weight of 1)")
    parser.add_argument("--preset-share", type=float, default=0.75,
                        help="share of the translation rows drawn at exactly the preset's timesteps "
                             "(--preset-timesteps) instead of uniformly over --translation-t-range")
    parser.add_argument("--preset-timesteps", default=",".join(map(str, PRESET_TIMESTEPS)),
                        help="the timesteps --preset-share and --eps-preset-share draw from (the slots of the tiny "
                             "preset and of its 1- and 4-step variants)")
    parser.add_argument("--eps-preset-share", type=float, default=0.25,
                        help="the same for the epsilon rows (else uniform over 0..999)")
    parser.add_argument("--blend-share", type=float, default=0.25,
                        help="share of the UNet rows trained on a blend of two prompts (a prompt switch with blend)")
    parser.add_argument("--unet-channels", default="32,64,128,128",
                        help="the UNet's block widths, one level each (4 levels suit a scale-factor-4 autoencoder)")
    parser.add_argument("--full-res-attention", action=argparse.BooleanOptionalAction, default=False,
                        help="attention blocks at the full latent resolution too")
    parser.add_argument("--text-time-embedding", action=argparse.BooleanOptionalAction, default=True,
                        help="add the pooled prompt to the time embedding (every resnet, every level, sees it)")
    parser.add_argument("--time-scale-shift", action=argparse.BooleanOptionalAction, default=True,
                        help="the time (and prompt) embedding scales and shifts every resnet's features (FiLM)")
    parser.add_argument("--ema", type=float, default=0.995, help="decay of the weight average that ships")
    parser.add_argument("--save-every", type=int, default=100, help="steps between checkpoint saves")
    parser.add_argument("--no-figures", action="store_true", help="skip the quality figures at the end")
    parser.add_argument("--stop-after", choices=("autoencoder", "bank", "unet"), default="unet",
                        help="end after this phase (its result stays in the checkpoint; the weights are written "
                             "only after the UNet): e.g. to compare autoencoders")
    parser.add_argument("--processes", type=int, default=2,
                        help="training processes, one thread each, sharing every batch (gloo all-reduce of the "
                             "gradients): on the CPU two one-thread processes are ~2x one process, while one "
                             "process with two threads is no faster (and ~15x slower on a busy machine)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.translation_rows < args.unet_batch:
        parser.error("--translation-rows must leave rows for both terms")
    args.unet_channels = tuple(int(c) for c in args.unet_channels.split(","))
    args.translation_t_range = tuple(int(t) for t in args.translation_t_range.split(","))
    args.style_weight_range = tuple(float(w) for w in args.style_weight_range.split(","))
    args.gradient_exempt_prompts = tuple(p.strip() for p in args.gradient_exempt_prompts.split(",") if p.strip())
    unknown = [p for p in args.gradient_exempt_prompts if p not in PROMPTS]
    if unknown:
        parser.error(f"--gradient-exempt-prompts: {', '.join(unknown)} is not one of {', '.join(PROMPTS[:-1])}")
    args.preset_timesteps = tuple(int(t) for t in args.preset_timesteps.split(","))
    if not all(0 <= t <= 999 for t in args.preset_timesteps):
        parser.error("--preset-timesteps are timesteps, 0..999")
    if not 0 <= args.translation_t_range[0] <= args.translation_t_range[1] <= 999:
        parser.error("--translation-t-range must be LOW,HIGH with 0 <= LOW <= HIGH <= 999")
    state: dict = torch.load(args.checkpoint, weights_only=False) if args.checkpoint.is_file() else {}
    if state and state.get("seed") != args.seed:
        parser.error(f"{args.checkpoint} was made with seed {state.get('seed')}; pass that seed or a new --checkpoint")
    if args.unet_batch % (2 * args.processes) or args.ae_batch % (2 * args.processes):
        parser.error("--unet-batch and --ae-batch must be multiples of 2 x --processes")
    if args.processes == 1:
        return train(args)
    import tempfile

    from torch import multiprocessing

    with tempfile.TemporaryDirectory() as rendezvous:
        multiprocessing.spawn(train_process, args=(args, Path(rendezvous) / "store"), nprocs=args.processes)
    return 0


def train_process(rank: int, args: argparse.Namespace, rendezvous: Path) -> None:
    """One of `--processes` training processes (started by torch.multiprocessing.spawn)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=args.processes)
    try:
        train(args)
    finally:
        dist.destroy_process_group()


def train(args: argparse.Namespace) -> int:
    """The three phases (each resumed from the checkpoint), then the weights and figures (by process 0)."""
    torch.set_flush_denormal(True)
    torch.set_num_threads(args.threads)
    state: dict = torch.load(args.checkpoint, weights_only=False) if args.checkpoint.is_file() else {}
    state["seed"] = args.seed
    state["_since"] = time.time()  # training time counts from here (loading photos and models included)
    torch.manual_seed(args.seed)  # initial weights
    ae = build_autoencoder(args.ae_channels, args.ae_scale_factor)
    unet = build_unet(args.unet_channels, args.full_res_attention, UNET_SIZE // args.ae_scale_factor,
                      args.text_time_embedding, args.time_scale_shift)
    text_encoder = build_text_encoder()
    for name, module in (("ae", ae), ("unet", unet), ("text_encoder", text_encoder)):
        if name in state:  # note: "ae" is saved folded once the bank exists (fold_latent_normalisation)
            module.load_state_dict(state[name])
    photos = [load_photo(name) for name in TRAINING_PHOTOS]
    train_autoencoder(ae.train(), photos, args, state, args.checkpoint)
    ae.eval().requires_grad_(False)
    fold_latent_normalisation(ae, photos, args, state)
    if args.stop_after == "autoencoder":
        save_checkpoint(args.checkpoint, state)
        return 0
    if "bank" not in state:
        state["bank"] = build_bank(ae, photos, args)
        save_checkpoint(args.checkpoint, state)
    if args.stop_after == "bank":
        return 0
    from transformers import CLIPTokenizer

    tokens = prompt_tokens(CLIPTokenizer.from_pretrained(CONFIGS / "tokenizer"))
    train_unet(unet.train(), text_encoder.train(), tokens, state["bank"], args, state, args.checkpoint)
    save_checkpoint(args.checkpoint, state)
    if process_rank()[0] != 0:
        return 0
    elapsed = state["seconds"]
    for module, key in ((unet, "unet_ema"), (text_encoder, "text_encoder_ema")):  # the averaged weights ship
        if key in state:
            module.load_state_dict(state[key])
    write_model(args.out, ae.eval(), unet.eval(), text_encoder.eval())
    print(f"trained in {elapsed / 60:.1f} min (this run and the runs it resumed); wrote {args.out}")
    print(f"final losses: autoencoder pixel {state['ae_loss']:.4f}, unet eps {state['eps_loss']:.4f}, "
          f"unet translation x0 {state['x0_loss']:.4f}")
    if not args.no_figures:
        from bench.tiny_figures import print_figures

        print_figures(args.out, threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
