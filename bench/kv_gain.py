"""What projecting cross-attention keys / values once per prompt saves (engines.kv_cache), on the torch UNet.

    python bench/kv_gain.py --model tiny [--rounds 5]          # the trained tiny model, 256x256
    python bench/kv_gain.py --model sd15-shape [--rounds 3]    # SD 1.5's UNet with random weights, 512x512

Two copies of the same UNet (one with the K/V processors) are called alternately on the same inputs (batch 2, one
prompt); prints per round plain / cached seconds and the median ratio, plus the largest output difference.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines.kv_cache import CrossAttentionKV  # noqa: E402


def unet_and_inputs(model: str):
    """(unet, latents (2, 4, h, w), timesteps (2,), embeddings (2, 77, D)) for `model`."""
    generator = torch.Generator().manual_seed(0)
    if model == "tiny":
        from engines.loading import ModelSpec, load_components

        unet = load_components(ModelSpec(model="tiny"), "cpu", torch.float32).unet
        h = 256 // 8
    else:
        from diffusers import UNet2DConditionModel

        torch.manual_seed(0)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        h = 512 // 8
    dim = int(unet.config.cross_attention_dim)
    embeddings = torch.randn(1, 77, dim, generator=generator).expand(2, -1, -1).contiguous()
    return unet.eval(), torch.randn(2, 4, h, h, generator=generator), torch.tensor([899, 299]), embeddings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "sd15-shape"), default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    plain, latents, timesteps, embeddings = unet_and_inputs(args.model)
    cached = copy.deepcopy(plain)
    kv = CrossAttentionKV.install(cached)

    def call_plain() -> torch.Tensor:
        return plain(latents, timesteps, encoder_hidden_states=embeddings).sample

    def call_cached() -> torch.Tensor:
        kv.update(embeddings)
        return cached(latents, timesteps, encoder_hidden_states=embeddings).sample

    with torch.inference_mode():
        difference = float((call_plain() - call_cached()).abs().max())  # also the warm-up call of each
        rounds = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            call_plain()
            middle = time.perf_counter()
            call_cached()
            rounds.append((middle - started, time.perf_counter() - middle))
    ratios = [a / b for a, b in rounds]
    print(json.dumps({"model": args.model, "layers": len(kv.layers), "max_abs_difference": difference,
                      "seconds_plain_cached": [[round(a, 4), round(b, 4)] for a, b in rounds],
                      "speedup_per_round": [round(r, 3) for r in ratios],
                      "speedup_median": round(statistics.median(ratios), 3)}, indent=2))


if __name__ == "__main__":
    main()
