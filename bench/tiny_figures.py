"""Quality figures of the trained `tiny` model on the held-out photo, through the real stream batch.

    python bench/tiny_figures.py                 # the shipped weights
    python bench/tiny_figures.py --model DIR     # another diffusers folder (e.g. a training run's output)

Prints the autoencoder's PSNR on the held-out photo and, per style, PSNR / SSIM of the stream's output against
the style transform of the input (`engines.tiny.styles`) for 1, 2 and 4 img2img steps, as a Markdown table.
`restyle` is also what the quality tests drive.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.config import StreamConfig  # noqa: E402
from core.prompts import PromptCache, PromptSwitcher  # noqa: E402
from core.stream import DiffusionStream  # noqa: E402
from engines.tiny.photos import HELD_OUT_PHOTO, load_photo, square_view  # noqa: E402
from engines.tiny.styles import STYLES  # noqa: E402
from vcam.presets import load_preset  # noqa: E402

SIZE = 256  # the tiny preset's resolution
# The tiny preset's slots (presets/tiny.toml: one step, t = 39), which the quality specs and benches run at
PRESET_SLOTS = tuple(load_preset("tiny").stream.t_index_list)
# img2img slots on the 50-step LCM grid for 1, 2 and 4 steps at the small-noise end, where the tiny model was
# trained to restyle; 1 step is the preset's
STEP_SETTINGS = {1: PRESET_SLOTS, 2: (47, 49), 4: (46, 47, 48, 49)}


def tiny_engine(model: str | Path = "tiny", size: int = SIZE, threads: int = 2):
    """A torch engine on the CPU (fp32) running `model` ("tiny" = the shipped weights) at size x size."""
    from engines.base import EngineShapes
    from engines.factory import create_engine
    from engines.loading import ModelSpec

    shapes = EngineShapes(width=size, height=size, frame_batch=1, unet_batch=4)
    return create_engine("torch", ModelSpec(model=str(model)), shapes, device="cpu", threads=threads)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> (1, 3, H, W): what `DiffusionStream.process` takes."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()


def to_image(output: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) float32."""
    return output[0].permute(1, 2, 0).float().numpy()


def make_stream(engine, prompt: str, t_index_list=PRESET_SLOTS, similarity=None, seed: int = 2,
                size: int = SIZE, prompts=tuple(STYLES)) -> DiffusionStream:
    """A size x size stream at the tiny preset's settings (no guidance), every style prompt already encoded."""
    config = StreamConfig(width=size, height=size, t_index_list=tuple(t_index_list), guidance="none", seed=seed,
                          prompt=prompt)
    cache = PromptCache(engine.encode_prompt)
    cache.prefill([*prompts, prompt, ""])
    return DiffusionStream(engine, config, PromptSwitcher(cache, "", prompt), similarity)


def restyle(engine, image: np.ndarray, prompt: str, t_index_list=PRESET_SLOTS) -> np.ndarray:
    """A still `image` (H, W, 3) through a fresh stream until its output is the full len(t_index_list)-step
    img2img of it (the T-th call), as (H, W, 3) in [0, 1]."""
    stream = make_stream(engine, prompt, t_index_list, size=image.shape[0])
    frame = to_tensor(image)
    for _ in range(len(t_index_list)):
        output = stream.process(frame)
    return to_image(output)


def held_out_image(size: int = SIZE) -> np.ndarray:
    """The photo no training step saw, as the square (size, size, 3) a camera frame becomes."""
    return square_view(load_photo(HELD_OUT_PHOTO), size)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(b, a, data_range=1.0))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


def sample_agreement(reference, other, prompt: str, frames: int, first_scored: int, size: int = SIZE) -> dict:
    """How close `other`'s pictures stay to `reference`'s: both engines run the same stream (the tiny preset's
    settings, `prompt`) over the moving sample source; PSNR / SSIM of `other`'s output frames against the
    reference's, from frame `first_scored` on (median and lowest)."""
    from vcam.sample_source import SampleSource

    streams = [make_stream(engine, prompt, size=size) for engine in (reference, other)]
    source = SampleSource(width=size, height=size)
    scores = []
    for index in range(frames):
        frame = to_tensor(source.frame(index).astype(np.float32) / 255)
        expected, got = (to_image(stream.process(frame)) for stream in streams)
        if index >= first_scored:
            scores.append((psnr(got, expected), ssim(got, expected)))
    return {"frames_compared": len(scores), "psnr_median": statistics.median(s[0] for s in scores),
            "psnr_min": min(s[0] for s in scores), "ssim_median": statistics.median(s[1] for s in scores),
            "ssim_min": min(s[1] for s in scores)}


def autoencoder_psnr(engine, image: np.ndarray) -> float:
    """PSNR (dB) of decode(encode(image)) against the image."""
    latents = engine.encode_images(to_tensor(image) * 2 - 1)
    decoded = ((engine.decode_latents(latents) + 1) / 2).clamp(0, 1)
    return psnr(to_image(decoded), image)


def figures(engine) -> dict:
    """{"autoencoder_psnr": dB, "styles": {style: {steps: {"psnr": dB, "ssim": x}}}} on the held-out photo."""
    image = held_out_image()
    table: dict = {}
    for style, transform in STYLES.items():
        target = transform(image)
        table[style] = {}
        for steps, t_index_list in STEP_SETTINGS.items():
            output = restyle(engine, image, style, t_index_list)
            table[style][steps] = {"psnr": psnr(output, target), "ssim": ssim(output, target)}
    return {"autoencoder_psnr": autoencoder_psnr(engine, image), "styles": table}


def print_figures(model: str | Path = "tiny", threads: int = 2) -> dict:
    """Measure and print the figures as Markdown (what the README's table shows)."""
    torch.set_flush_denormal(True)
    result = figures(tiny_engine(model, threads=threads))
    print(f"autoencoder PSNR on the held-out photo ({HELD_OUT_PHOTO}, {SIZE}x{SIZE}): "
          f"{result['autoencoder_psnr']:.1f} dB")
    header = " | ".join(f"{n} step{'s' if n > 1 else ''} {list(STEP_SETTINGS[n])}" for n in STEP_SETTINGS)
    print(f"| style (PSNR dB / SSIM vs the transform) | {header} |")
    print("| --- |" + " --- |" * len(STEP_SETTINGS))
    for style, row in result["styles"].items():
        cells = " | ".join(f"{row[n]['psnr']:.1f} / {row[n]['ssim']:.2f}" for n in STEP_SETTINGS)
        print(f"| {style} | {cells} |")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print_figures(args.model, args.threads)
