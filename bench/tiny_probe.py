"""Where a trained tiny model loses the picture: its autoencoder, its UNet per timestep, its text encoder.

    python bench/tiny_probe.py                   # the shipped weights
    python bench/tiny_probe.py --model DIR       # a training run's output (`bench/train_tiny.py --out DIR`)

On the held-out photo (`chelsea`, 256x256), no stream: the UNet's one-call x0-prediction, x0 = (x_t - sigma_t eps)
/ alpha_t, from the photo's latent noised to t with each prompt (the img2img "translation" the stream asks of it):
1. latent MSE of x0 against the style's latent, next to the MSE of just returning the photo's latent (a model
   that ignores the prompt scores that), and how far the prompt moves x0 from the identity prompt's x0;
2. PSNR / SSIM of the decoded x0 against the style transform, and of the style's round trip through the autoencoder
   (the most any UNet could give);
3. the round trip's structure margins (tests/test_tiny_quality.py `structure_margin`): which structure specs a
   perfect UNet could pass with this autoencoder;
4. the RMS distance between the prompts' text embeddings (a prompt the text encoder merged with another cannot
   steer the UNet).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.tiny_figures import held_out_image, psnr, ssim  # noqa: E402
from bench.train_tiny import to_tensor  # noqa: E402
from core.schedule import alphas_cumprod  # noqa: E402
from engines.base import NoiseScheduleConfig  # noqa: E402
from engines.tiny import TRAINED_TINY_MODEL  # noqa: E402
from engines.tiny.photos import UNRELATED_PHOTO, load_photo, square_view  # noqa: E402
from engines.tiny.styles import IDENTITY_PROMPT, STYLES  # noqa: E402

PROMPTS = [*STYLES, IDENTITY_PROMPT]
TIMESTEPS = (19, 59, 99, 179, 259, 359, 559, 759)


def load(folder: Path):
    """(autoencoder, unet, text encoder, tokenizer) of a diffusers folder, fp32, eval mode."""
    from diffusers import AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    ae = AutoencoderTiny.from_pretrained(folder / "vae").float().eval()
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").float().eval()
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").float().eval()
    return ae, unet, text_encoder, CLIPTokenizer.from_pretrained(folder / "tokenizer")


def encode(ae, images: list[np.ndarray]) -> torch.Tensor:
    """(N, H, W, 3) in [0, 1] -> (N, 4, H/f, W/f) latents."""
    return ae.encode(to_tensor(np.asarray(images, dtype=np.float32))).latents


def decode(ae, latents: torch.Tensor) -> np.ndarray:
    """(1, 4, h, w) -> (H, W, 3) in [0, 1]."""
    return ((ae.decode(latents).sample.clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 0).numpy()


def x0_prediction(unet, latents, t: int, embedding, noise, abar) -> torch.Tensor:
    """The UNet's x0-prediction from `latents` noised to t with `noise` (epsilon parametrisation)."""
    a, s = abar[t].sqrt(), (1 - abar[t]).sqrt()
    x_t = a * latents + s * noise  # (N, 4, h, w)
    eps = unet(x_t, torch.full((len(x_t),), t), encoder_hidden_states=embedding.expand(len(x_t), -1, -1)).sample
    return (x_t - s * eps) / a


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


@torch.no_grad()
def probe(folder: Path, timesteps=TIMESTEPS, picture_timesteps=(19, 99, 359), seed: int = 0) -> None:
    from test_tiny_quality import structure_margin, structure_similarity

    ae, unet, text_encoder, tokenizer = load(folder)
    abar = torch.from_numpy(alphas_cumprod(NoiseScheduleConfig())).float()
    tokens = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    embeddings = text_encoder(tokens).last_hidden_state  # (prompts, 77, D)
    photo = held_out_image()
    targets = [STYLES[p](photo) if p in STYLES else photo for p in PROMPTS]
    latents = encode(ae, [photo, *targets])  # (1 + prompts, 4, h, w): the photo, then each prompt's target
    noise = torch.randn((2, *latents.shape[1:]), generator=torch.Generator().manual_seed(seed))
    source = latents[:1].expand(2, -1, -1, -1)

    print(f"{folder}: translation of the held-out photo's latent, per prompt: x0 MSE against the target latent / "
          "MSE of returning the photo's latent; in brackets the RMS change of x0 the prompt makes against the "
          f"identity prompt ({IDENTITY_PROMPT!r}); two noise draws\n")
    identity = PROMPTS.index(IDENTITY_PROMPT)
    rows = []
    for t in timesteps:
        base_x0 = x0_prediction(unet, source, t, embeddings[identity:identity + 1], noise, abar)
        row = [str(t)]
        for k in range(len(PROMPTS)):
            x0 = x0_prediction(unet, source, t, embeddings[k:k + 1], noise, abar)
            target = latents[1 + k:2 + k]
            row.append(f"{float(((x0 - target) ** 2).mean()):.3f} / {float(((source - target) ** 2).mean()):.3f} "
                       f"({float(((x0 - base_x0) ** 2).mean().sqrt()):.3f})")
        rows.append(row)
    print(markdown(["t", *PROMPTS], rows))

    print("\nDecoded x0 against the prompt's transform of the photo, PSNR dB / SSIM (one noise draw)\n")
    rows = []
    for t in picture_timesteps:
        cells = [f"x0 at t = {t}"]
        for k in range(len(PROMPTS)):
            out = decode(ae, x0_prediction(unet, latents[:1], t, embeddings[k:k + 1], noise[:1], abar))
            cells.append(f"{psnr(out, targets[k]):.1f} / {ssim(out, targets[k]):.2f}")
        rows.append(cells)
    round_trips = [decode(ae, latents[1 + k:2 + k]) for k in range(len(PROMPTS))]
    rows.append(["round trip"] + [f"{psnr(out, target):.1f} / {ssim(out, target):.2f}"
                                  for out, target in zip(round_trips, targets)])
    print(markdown(["", *PROMPTS], rows))

    print("\nStructure spec on the round trip (gray SSIM with the photo: own / unrelated photo's, gap against the "
          "gap asked): a perfect UNet with this autoencoder passes only where the round trip does\n")
    unrelated = square_view(load_photo(UNRELATED_PHOTO), photo.shape[0])
    rows = []
    for k, (style, transform) in enumerate(STYLES.items()):
        own = structure_similarity(photo, round_trips[k])
        other = structure_similarity(photo, decode(ae, encode(ae, [transform(unrelated)])))
        asked = structure_margin(photo, unrelated, style)
        rows.append([style, f"{own:.3f} / {other:.3f}", f"{own - other:+.3f}", f"{asked:+.3f}",
                     "yes" if own - other > asked else "no"])
    print(markdown(["style", "own / unrelated", "gap", "asked", "passes"], rows))

    print("\nText embeddings: RMS distance between prompts (last hidden state, 77 tokens)\n")
    distance = ((embeddings[:, None] - embeddings[None]) ** 2).mean(dim=(2, 3)).sqrt()  # (prompts, prompts)
    print(markdown(["", *PROMPTS], [[p, *(f"{float(d):.3f}" for d in distance[i])] for i, p in enumerate(PROMPTS)]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=TRAINED_TINY_MODEL)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    probe(args.model)
