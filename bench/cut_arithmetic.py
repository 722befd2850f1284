"""The GPU arithmetic for "Several devices": bytes crossing each cut per call and a predicted fps, from the real
SD 1.5 / SD 2.1 UNet configs in engines/configs (built on the meta device: no weights, no memory).

    python bench/cut_arithmetic.py [--size 512] [--rows 2] [--call-ms 11.0]

Cost per unit is counted in FLOPs (torch.utils.flop_counter), a stand-in for GPU time that needs no GPU; the cuts
are `engines.stages.balanced_cuts` over them. Bytes are fp16 for the M rows of one call (one row = one frame at one slot); one call = one output frame (F=1).
Compute is assumed proportional to rows, which flatters the pipeline's one-row micro-batches on a GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.stages import StageState, UNetUnits, balanced_cuts, stage_costs  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "engines" / "configs"
LINKS_GB_S = {"NVLink 3 (A100, per direction)": 300.0, "PCIe 4.0 x16": 25.0, "PCIe 3.0 x16": 12.0,
              "10 GbE (other host)": 1.1}


def unit_figures(model: str, size: int, rows: int) -> tuple[UNetUnits, list[float], list[int]]:
    from diffusers import UNet2DConditionModel

    config = json.loads((CONFIGS / model / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).to(torch.float16)
    units = UNetUnits(unet)
    latent = size // 8
    state = StageState.inputs(torch.empty(rows, 4, latent, latent, device="meta", dtype=torch.float16),
                              torch.full((rows,), 500, device="meta"),
                              torch.empty(rows, 77, config["cross_attention_dim"], device="meta", dtype=torch.float16))
    flops, crossing = [], []
    for index in range(len(units)):
        with FlopCounterMode(display=False) as counter:
            state = units.run(state, index, index + 1)
        flops.append(float(counter.get_total_flops()))
        crossing.append(state.nbytes())  # what would cross a cut right after this unit
    return units, flops, crossing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rows", type=int, default=2, help="UNet batch rows per call M (T*F, x2 for full RCFG)")
    parser.add_argument("--call-ms", type=float, default=11.0,
                        help="one UNet call of M rows on one GPU, ms (StreamDiffusion reports 91 fps img2img on an "
                             "RTX 4090, ~11 ms per frame)")
    args = parser.parse_args()
    for model in ("sd15", "sd21"):
        units, flops, crossing = unit_figures(model, args.size, args.rows)
        total = sum(flops)
        report = {"model": model, "size": args.size, "rows": args.rows, "unet_gflops": round(total / 1e9, 1)}
        for stages in (2, 4):
            cuts = balanced_cuts(flops, stages)
            shares = [c / total for c in stage_costs(flops, cuts)]
            cut_bytes = [crossing[c - 1] for c in cuts[1:-1]]
            slowest_ms, m = max(shares) * args.call_ms, args.rows
            per_link = {}
            for link, gb_s in LINKS_GB_S.items():
                transfer_ms = max(cut_bytes) / (gb_s * 1e9) * 1e3  # all M rows across the widest cut
                # pipeline: M one-row micro-batches through N stages: (M + N - 1) steps of one row's slowest stage
                pipeline_ms = (m + stages - 1) * (slowest_ms + transfer_ms) / m
                # AsyncDiff: every stage at once on the whole batch, then one transfer
                per_link[link] = {"transfer_ms_per_cut": round(transfer_ms, 3),
                                  "pipeline_calls_per_s": round(1000 / pipeline_ms, 1),
                                  "asyncdiff_calls_per_s": round(1000 / (slowest_ms + transfer_ms), 1)}
            report[f"{stages}_stages"] = {
                "cuts_after": [units.names[c - 1] for c in cuts[1:-1]],
                "flop_share_per_stage": [round(s, 3) for s in shares],
                "mb_crossing_each_cut": [round(b / 1e6, 2) for b in cut_bytes],
                "one_gpu_calls_per_s": round(1000 / args.call_ms, 1),
                "links": per_link,
            }
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
