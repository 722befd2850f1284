"""What makes a torch UNet call slower on the CPU: the leads of issue 14, each timed against its baseline, alternated.

    python bench/torch_parity.py --model sd21-shape --size 512 --batch 1 --repeats 2

In one process, on the same inputs: weights read from the memory-mapped safetensors file against weights copied
into memory of their own (what `engines.loading.own_weight_memory` does); NCHW against channels-last; the call on
the main thread against a fresh thread (where the pipeline's inference thread calls it). Each pair of variants is
timed A, B, B, A, ... so a steady drift cancels; the printed ratio is baseline time / variant time per repeat
(> 1: the variant is faster) with the median. Also minor page faults per call, which a loaded machine does not change.
"""
from __future__ import annotations

import argparse
import copy
import resource
import statistics
import threading
import time
from typing import Callable

import torch

from engines.loading import ModelSpec, resolve_model


def load_unet_as_diffusers_does(name: str) -> torch.nn.Module:
    """The UNet as diffusers' from_pretrained leaves it (fp32 file -> views of the file's mapping)."""
    from diffusers import UNet2DConditionModel

    folder = resolve_model(ModelSpec(model=name)).path
    return UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32, use_safetensors=True,
                                                local_files_only=True, low_cpu_mem_usage=False).eval()


def timed_call(call: Callable[[], object], on_fresh_thread: bool = False) -> tuple[float, float]:
    """(wall seconds, minor page faults) of one call, on this thread or a fresh one."""
    outcome: list[tuple[float, float]] = []

    def run() -> None:
        torch.set_flush_denormal(True)
        before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        with torch.inference_mode():
            call()
        outcome.append((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))

    if on_fresh_thread:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    else:
        run()
    return outcome[0]


def compare(label: str, baseline: Callable[[], object], variant: Callable[[], object], repeats: int,
            variant_thread: bool = False) -> None:
    timed_call(baseline)
    timed_call(variant, variant_thread)  # first calls allocate
    ratios, faults = [], {"baseline": [], "variant": []}
    for index in range(repeats):
        order = (("baseline", baseline, False), ("variant", variant, variant_thread))
        times = {}
        for name, call, thread in (order if index % 2 == 0 else order[::-1]):
            seconds, page_faults = timed_call(call, thread)
            times[name] = seconds
            faults[name].append(page_faults)
        ratios.append(times["baseline"] / times["variant"])
        print(f"{label}: repeat {index + 1}: baseline {times['baseline']:.2f} s, variant {times['variant']:.2f} s, "
              f"ratio {ratios[-1]:.3f}", flush=True)
    print(f"{label}: median ratio {statistics.median(ratios):.3f}; minor page faults per call "
          f"{statistics.median(faults['baseline']):.0f} -> {statistics.median(faults['variant']):.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd21-shape")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--leads", default="mmap,channels-last,thread")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    mapped = load_unet_as_diffusers_does(args.model)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(args.batch, 4, args.size // 8, args.size // 8, generator=generator)  # (B, 4, h, w)
    timesteps = torch.full((args.batch,), 499)
    embeddings = torch.randn(args.batch, 77, mapped.config.cross_attention_dim, generator=generator)  # (B, 77, D)

    def call_of(unet: torch.nn.Module, sample: torch.Tensor = latents) -> Callable[[], object]:
        return lambda: unet(sample, timesteps, encoder_hidden_states=embeddings).sample

    own = copy.deepcopy(mapped)  # deepcopy allocates every tensor anew: the weights own their memory
    leads = args.leads.split(",")
    if "mmap" in leads:
        compare("weights in own memory vs file-mapped", call_of(mapped), call_of(own), args.repeats)
    if "channels-last" in leads:
        nhwc = copy.deepcopy(own).to(memory_format=torch.channels_last)
        compare("channels-last vs NCHW", call_of(own),
                call_of(nhwc, latents.contiguous(memory_format=torch.channels_last)), args.repeats)
        del nhwc
    if "thread" in leads:
        compare("fresh thread vs main thread", call_of(own), call_of(own), args.repeats, variant_thread=True)


if __name__ == "__main__":
    main()
