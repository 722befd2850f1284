"""Specifications of the multi-device engine: the UNet in stages on 2 and 3 CPU processes over gloo.

The references are the same tiny model in this process: row by row for the pipeline (its micro-batches), the
whole batch for exact AsyncDiff warm-up calls, and a plain single-process rendering of AsyncDiff's schedule.
"""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from core.config import StreamConfig
from core.prompts import PromptCache, PromptSwitcher
from core.stream import DiffusionStream
from engines.asyncdiff import OneProcessAsyncDiff, predecessor_rows, rows_back
from engines.base import EngineShapes
from engines.distributed_engine import DistributedEngine, build_distributed_engine
from engines.loading import ModelSpec
from engines.parallel_settings import DeviceSettings
from engines.stage_transport import WorkerLostError
from engines.stages import StageState

pytestmark = pytest.mark.timeout(1800)  # the engines start 2 + 3 processes: >600 s at load average 28 on 2 cores

SIZE = 64
PROMPT, NEGATIVE = "a watercolor painting", "blurry"
GUIDANCE = ("none", "full", "self", "initialize")


def start_engine(model_dir, processes: int, parallel: str = "pipeline", warmup: int = 2) -> DistributedEngine:
    settings = DeviceSettings(devices=f"cpu:{processes}", parallel=parallel, warmup=warmup)
    return build_distributed_engine(ModelSpec(model=str(model_dir)), EngineShapes(SIZE, SIZE, 1, 4), settings, 2)


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    """One engine per process count, shared by the module (each start costs a few seconds per process)."""
    started = {n: start_engine(tiny_model_dir.model_dir, n) for n in (2, 3)}
    yield started
    for engine in started.values():
        engine.close()


class OneProcess:
    """The distributed engine's own UNet units, run in this process: one row at a time (the pipeline's
    micro-batches), or the whole batch at once (`by_rows=False`: AsyncDiff's exact calls)."""

    def __init__(self, engine: DistributedEngine, by_rows: bool = True) -> None:
        self.engine, self.units, self.by_rows = engine, engine.units, by_rows
        for name in ("device", "dtype", "noise_schedule", "latent_channels", "vae_scale_factor"):
            setattr(self, name, getattr(engine, name))

    def encode_prompt(self, texts):
        return self.engine.encode_prompt(texts)

    def encode_images(self, images):
        return self.engine.encode_images(images)

    def decode_latents(self, latents):
        return self.engine.decode_latents(latents)

    def predict_noise(self, latents, timesteps, embeddings):
        if not self.by_rows:
            return self.units.run(StageState.inputs(latents, timesteps, embeddings)).sample
        return torch.cat([self.units.run(StageState.inputs(latents[r:r + 1], timesteps[r:r + 1],
                                                            embeddings[r:r + 1])).sample
                          for r in range(latents.shape[0])])


def simulated(engine: DistributedEngine, warmup: int = 2, stride: int = 1) -> OneProcessAsyncDiff:
    """AsyncDiff's schedule in this process, stage after stage, on the same units and cuts."""
    return OneProcessAsyncDiff(engine, engine.units, engine.boundaries, warmup, stride)


def make_stream(engine, guidance: str, steps: tuple[int, ...] = (20, 35, 45)) -> DiffusionStream:
    config = StreamConfig(width=SIZE, height=SIZE, t_index_list=steps, guidance=guidance, guidance_scale=1.5,
                          prompt=PROMPT, negative_prompt=NEGATIVE)
    cache = PromptCache(engine.encode_prompt)
    cache.prefill([PROMPT, NEGATIVE])
    return DiffusionStream(engine, config, PromptSwitcher(cache, NEGATIVE, PROMPT))


def moving_frames(count: int) -> list[torch.Tensor]:
    """A bright square moving across a gradient: consecutive frames are close but differ, like a camera."""
    frames = []
    base = torch.linspace(0, 1, SIZE).expand(SIZE, SIZE)
    for index in range(count):
        frame = torch.stack([base, base.T, 1 - base]).clone()
        frame[:, 10 + 3 * index: 26 + 3 * index, 20:36] = 1.0
        frames.append(frame[None])  # (1, 3, H, W)
    return frames


def run_stream(engine, guidance: str, frames: int = 6) -> list[torch.Tensor]:
    stream = make_stream(engine, guidance)
    return [stream.process(frame) for frame in moving_frames(frames)]


@pytest.mark.parametrize("processes", [2, 3])
@pytest.mark.parametrize("guidance", GUIDANCE)
def test_pipeline_parallel_stream_equals_one_process_exactly(engines, processes, guidance):
    engine = engines[processes]
    engine.set_parallel("pipeline")
    distributed = run_stream(engine, guidance)
    one_process = run_stream(OneProcess(engine), guidance)
    for got, expected in zip(distributed, one_process):
        assert torch.equal(got, expected)


def test_pipeline_parallel_matches_the_whole_batch_unet_to_float_rounding(engines):
    engine = engines[2]
    engine.set_parallel("pipeline")
    generator = torch.Generator().manual_seed(5)
    latents, embeddings = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 77, 128, generator=generator)
    timesteps = torch.tensor([999, 759, 999, 759])
    whole = engine.units.run(StageState.inputs(latents, timesteps, embeddings)).sample
    assert torch.allclose(engine.predict_noise(latents, timesteps, embeddings), whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("processes", [2, 3])
@pytest.mark.parametrize("guidance", ["none", "full", "initialize"])
def test_asyncdiff_equals_a_one_process_simulation_of_the_same_schedule(engines, processes, guidance):
    engine = engines[processes]
    engine.set_parallel("asyncdiff", warmup=2)
    distributed = run_stream(engine, guidance)
    one_process = run_stream(simulated(engine, warmup=2), guidance)
    exact = run_stream(OneProcess(engine), guidance)
    for got, expected in zip(distributed, one_process):
        assert torch.equal(got, expected)
    assert not torch.allclose(distributed[-1], exact[-1], atol=1e-3), "after the warm-up AsyncDiff is approximate"


@pytest.mark.parametrize("processes", [2, 3])
def test_asyncdiff_with_warmup_covering_every_call_equals_the_exact_output(engines, processes):
    engine = engines[processes]
    engine.set_parallel("asyncdiff", warmup=100)
    distributed = run_stream(engine, "self")
    exact = run_stream(OneProcess(engine, by_rows=False), "self")
    for got, expected in zip(distributed, exact):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("processes", [2, 3])
def test_asyncdiff_with_a_stride_equals_the_one_process_schedule_and_differs_from_stride_one(engines, processes):
    engine = engines[processes]
    engine.set_parallel("asyncdiff", warmup=1, stride=2)
    distributed = run_stream(engine, "full", frames=7)
    one_process = run_stream(simulated(engine, warmup=1, stride=2), "full", frames=7)
    stride_one = run_stream(simulated(engine, warmup=1, stride=1), "full", frames=7)
    for got, expected in zip(distributed, one_process):
        assert torch.equal(got, expected)
    assert not torch.equal(distributed[-1], stride_one[-1])


def test_with_stride_two_the_middle_stage_runs_on_every_second_call_only(engines):
    engine = engines[3]
    engine.set_parallel("asyncdiff", warmup=1, stride=2)
    stream = make_stream(engine, "self")
    frames = moving_frames(5)
    stream.process(frames[0])  # exact (the warm-up)
    computed = []
    for frame in frames[1:]:  # exchange, last stage only, exchange, last stage only
        before = engine.stats()
        stream.process(frame)
        after = engine.stats()
        computed.append([a > b for a, b in zip(after.compute_seconds, before.compute_seconds)])
    assert computed == [[True, True, True], [True, False, True], [True, True, True], [True, False, True]]
    # (rank 0 always computes: its embed unit, which gives the time and text embeddings, runs on every call)


def unet_call_inputs(seed: int, rows: int = 4):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 4, 8, 8, generator=generator), torch.randn(rows, 77, 128, generator=generator)


def test_a_prompt_switch_or_a_forgotten_history_restarts_the_asyncdiff_warmup(engines):
    engine = engines[2]
    engine.set_parallel("asyncdiff", warmup=2)
    timesteps = torch.tensor([999, 759, 499, 259])
    _, first_prompt = unet_call_inputs(1)
    _, second_prompt = unet_call_inputs(2)
    whole = OneProcess(engine, by_rows=False)
    exact = []
    for call, embeddings in enumerate([first_prompt] * 4 + [second_prompt] * 4 + ["forget"] + [second_prompt] * 3):
        if isinstance(embeddings, str):
            engine.forget_previous_calls()  # what the stream does after a reset (see the next spec)
            continue
        latents, _ = unet_call_inputs(100 + call)
        got = engine.predict_noise(latents, timesteps, embeddings)
        exact.append(torch.equal(got, whole.predict_noise(latents, timesteps, embeddings)))
    # two exact calls at the start, after the switch, and after the history was forgotten
    assert exact == [True, True, False, False, True, True, False, False, True, True, False]


def test_a_reset_stream_on_asyncdiff_starts_over_as_a_new_stream_would(engines):
    engine = engines[2]
    engine.set_parallel("asyncdiff", warmup=1)
    frames = moving_frames(9)
    stream = make_stream(engine, "self")
    for frame in frames[:6]:
        stream.process(frame)
    stream.reset()  # a cut in the source
    after_reset = [stream.process(frame) for frame in frames[6:]]
    fresh = make_stream(engine, "self")  # a new stream rebuilds its batch, which restarts the warm-up too
    for got, expected in zip(after_reset, [fresh.process(frame) for frame in frames[6:]]):
        assert torch.equal(got, expected)


def test_embeddings_travel_only_when_they_change(engines):
    engine = engines[3]
    engine.set_parallel("pipeline")
    timesteps = torch.tensor([999, 759, 499, 259])
    latents, first_prompt = unet_call_inputs(3)
    _, second_prompt = unet_call_inputs(4)
    embedded = engine.units.run(StageState.inputs(latents, timesteps, first_prompt), 0, 1)
    embeddings_bytes = (embedded.emb.numel() + embedded.context.numel()) * 4 * (engine.world - 1)  # fp32
    sent = []
    for embeddings in [first_prompt] * 3 + [second_prompt] * 3:
        before = engine.stats()
        engine.predict_noise(latents, timesteps, embeddings)
        after = engine.stats()
        sent.append([a - b for a, b in zip(after.bytes_sent, before.bytes_sent)])
    rank0 = [per_rank[0] for per_rank in sent]
    steady = rank0[1]
    assert rank0 == [steady + embeddings_bytes, steady, steady, steady + embeddings_bytes, steady, steady]
    assert all(per_rank[1:] == sent[0][1:] for per_rank in sent), "workers never send embeddings"


def test_a_stream_batch_row_follows_the_same_frame_one_slot_back():
    # none / self, T=3, F=1: slot s reads slot s-1; slot 0 reads itself (the previous frame at the same timestep)
    assert predecessor_rows(torch.tensor([999, 759, 259])).tolist() == [0, 0, 1]
    # F=2: each frame keeps its position within the slot
    assert predecessor_rows(torch.tensor([999, 999, 259, 259])).tolist() == [0, 1, 0, 1]
    # full: [uncond T*F | cond T*F]: uncond rows follow uncond rows, cond rows cond rows
    assert predecessor_rows(torch.tensor([999, 259, 999, 259])).tolist() == [0, 0, 2, 2]
    # initialize: [uncond slot 0 | cond T*F]: slot 1 follows the cond row of slot 0
    assert predecessor_rows(torch.tensor([999, 999, 259])).tolist() == [0, 1, 1]


def test_a_row_follows_its_frame_back_several_calls_and_a_newer_frame_reads_the_newest_then():
    one_call = predecessor_rows(torch.tensor([999, 759, 499, 259]))  # T=4: slot s reads slot s-1
    assert rows_back(one_call, 1).tolist() == [0, 0, 1, 2]
    assert rows_back(one_call, 2).tolist() == [0, 0, 0, 1]  # slots 0 and 1 entered since: slot 0 of that call
    assert rows_back(one_call, 0).tolist() == [0, 1, 2, 3]
    full = predecessor_rows(torch.tensor([999, 499, 259, 999, 499, 259]))  # uncond and cond stay apart
    assert rows_back(full, 2).tolist() == [0, 0, 0, 3, 3, 3]


def test_a_message_carries_tensors_of_every_dtype_and_shape_in_one_buffer():
    from engines.stage_transport import pack, unpack

    tensors = [torch.randn(2, 3), torch.tensor([999, 259]), torch.randn(4, 1, 2, 2).half(), torch.zeros(0, 5)]
    header, payload = pack(tensors, torch.device("cpu"))
    assert payload.dtype == torch.uint8 and payload.numel() == sum(t.numel() * t.element_size() for t in tensors)
    for sent, received in zip(tensors, unpack(header, payload)):
        assert received.dtype == sent.dtype and torch.equal(received, sent)


def test_device_options_reach_the_run_settings_and_bad_ones_are_one_line():
    from engines.base import EngineUnavailableError
    from vcam.cli import build_parser
    from vcam.settings import resolve_settings

    args = build_parser().parse_args(["bench", "--devices", "cpu:3", "--parallel", "asyncdiff", "--asyncdiff-warmup", "4",
                                      "--asyncdiff-stride", "2"])
    devices = resolve_settings(args).devices
    assert devices == DeviceSettings(devices="cpu:3", parallel="asyncdiff", warmup=4, stride=2)
    assert devices.device_list() == ["cpu", "cpu", "cpu"] and devices.backend() == "gloo" and devices.several
    assert not resolve_settings(build_parser().parse_args(["bench"])).devices.several
    for bad, fix in (("cpu:x", "whole number"), ("tpu:0,tpu:1", "cpu:N, N, or a list"), ("cpu:0", "whole number")):
        with pytest.raises(EngineUnavailableError, match=fix) as raised:
            DeviceSettings(devices=bad)
        assert "\n" not in str(raised.value)
    with pytest.raises(EngineUnavailableError, match="--asyncdiff-stride must be 1 or more"):
        DeviceSettings(devices="cpu:2", stride=0)
    if not torch.cuda.is_available():
        with pytest.raises(EngineUnavailableError, match="use --devices cpu:2"):
            DeviceSettings(devices="cuda:0,cuda:1")
    assert DeviceSettings(devices="cpu:2", hosts="10.0.0.5").rendezvous() == ("10.0.0.5", 29517)


def test_stage_figures_count_every_call_and_the_bytes_that_crossed(engines):
    engine = engines[3]
    engine.set_parallel("pipeline")
    before = engine.stats()
    run_stream(engine, "none", frames=2)
    after = engine.stats()
    assert len(after.names) == 3 and after.names[0].startswith("embed") and after.names[-1].endswith("out")
    assert all(a - b == 2 for a, b in zip(after.calls, before.calls))
    assert all(a > b for a, b in zip(after.bytes_sent, before.bytes_sent))
    assert all(a > b for a, b in zip(after.compute_seconds, before.compute_seconds))


def test_a_killed_worker_raises_one_line_within_two_seconds_then_one_device_continues(tiny_model_dir):
    engine = start_engine(tiny_model_dir.model_dir, 2)
    try:
        generator = torch.Generator().manual_seed(9)
        latents, embeddings = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 77, 128, generator=generator)
        timesteps = torch.tensor([999, 259])
        engine.predict_noise(latents, timesteps, embeddings)
        worker = engine._processes[1]
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        start = time.monotonic()
        with pytest.raises(WorkerLostError) as raised:
            engine.predict_noise(latents, timesteps, embeddings)
        assert time.monotonic() - start < 10.0  # at once, not after gloo's 30-minute default timeout
        message = str(raised.value)
        assert "\n" not in message and "stage worker 1" in message and "exit code -9" in message
        after = engine.predict_noise(latents, timesteps, embeddings)  # one device from now on
        assert torch.equal(after, engine.units.run(StageState.inputs(latents, timesteps, embeddings)).sample)
    finally:
        engine.close()


def worker_pids(parent: int) -> list[int]:
    children = []
    for task in os.listdir(f"/proc/{parent}/task"):
        with open(f"/proc/{parent}/task/{task}/children") as handle:
            children += [int(pid) for pid in handle.read().split()]
    return [pid for pid in children if b"engines.stage_worker" in open(f"/proc/{pid}/cmdline", "rb").read()]


@pytest.mark.timeout(1500)  # two processes start torch and time every unit: >500 s at load average 24 on 2 cores
@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads the worker's pid from /proc")
def test_the_service_says_a_worker_died_in_one_line_and_stops_cleanly(tiny_user_cache):
    from bench.stops import start_vcam

    process = start_vcam({"DISPLAY": ""}, "--no-tray", "--devices", "cpu:2")
    try:
        process.wait_for_line("first stylised frame", timeout=1200)
        (worker,) = worker_pids(process.process.pid)
        os.kill(worker, signal.SIGKILL)
        rest = process.finish(timeout=60)
    finally:
        process.kill()
    lines = [line for line in rest.splitlines() if "stage worker 1" in line]
    assert len(lines) == 1 and "stopped" in lines[0], rest
    assert "Traceback" not in rest
    assert "released" in rest  # the camera and the virtual camera were let go


def test_a_worker_started_by_hand_joins_through_hosts(tiny_model_dir):
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # the one command README gives for the other machine, started first: it waits for vcam to come up
    worker = subprocess.Popen([sys.executable, "-m", "engines.stage_worker", "--connect", f"127.0.0.1:{port}",
                               "--rank", "1"])
    try:
        # Built on this thread: torch's thread count is per thread once a thread has computed, and the exact
        # comparison needs this process on the workers' one thread, as the other specs have it.
        settings = DeviceSettings(devices="cpu:2", hosts=f"127.0.0.1:{port}")
        spec = ModelSpec(model=str(tiny_model_dir.model_dir))
        engine = build_distributed_engine(spec, EngineShapes(SIZE, SIZE, 1, 2), settings, 2)
        generator = torch.Generator().manual_seed(4)
        latents, embeddings = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 77, 128, generator=generator)
        timesteps = torch.tensor([999, 259])
        expected = OneProcess(engine).predict_noise(latents, timesteps, embeddings)
        assert torch.equal(engine.predict_noise(latents, timesteps, embeddings), expected)
        engine.close()
        assert worker.wait(timeout=60) == 0  # told to stop, it ends by itself
    finally:
        if worker.poll() is None:
            worker.kill()
