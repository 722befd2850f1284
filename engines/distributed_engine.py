"""`DistributedEngine`: the `Engine` interface with the UNet cut into stages over several processes / devices.

Rank 0 is the caller's process: it owns the VAE, the text encoder and the stream, and runs stage 0; ranks
1..N-1 are `engines.stage_worker` processes this engine starts itself (or, with `--hosts`, that the user starts
on other machines), each holding only its stages. Transport is torch.distributed (gloo on the CPU and across
hosts, NCCL between GPUs) through our own process group, so no global default group is created.

How the work is shared (`DeviceSettings.parallel`):

- pipeline (exact). `predict_noise` is synchronous and a stream batch's call n+1 needs call n's output (its rows
  are call n's rows, denoised and shifted one slot), so successive calls cannot overlap without changing the
  result. What *is* independent is the rows within one call (one frame at one timestep each). The call's batch is
  cut into M micro-batches (one per row, as in GPipe) that flow through the stages: stage k works on row m while
  stage k+1 works on row m-1. The result equals running the same rows one by one on one process, bit for bit
  in fp32; against one whole-batch UNet call it differs by the batch-size dependence of the kernels (~1e-6).
  Time per call ~ (M + N - 1) * (one row through the slowest stage): up to M*N/(M+N-1) x faster than one
  device, and no extra latency. Batches of 2*T*F rows (full RCFG) fill the pipe best.
- asyncdiff (approximate). Every stage works on call n at once, each on what the stage before it produced one
  call earlier for the same frame one slot back (`engines.asyncdiff`); time per call ~ the slowest stage plus
  one transfer. The first `warmup` calls after a start, a change of the batch layout, a prompt switch or a
  restart of the stream's batch (`forget_previous_calls`) run exactly, in sequence. With `stride` S the stages
  before the last run and pass their output on every S-th call only (the paper's stride, see engines.asyncdiff).

The time and text embeddings of the batch travel only when they change (they are the same for every call of one
prompt and one layout): the workers keep them, and the stage states carry the activations alone.

A worker that dies makes the next (or current) call raise `WorkerLostError` at once (gloo sees the closed socket)
with one line naming the rank; from then on this engine runs the whole UNet on rank 0 (one device, exact).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
import time
import weakref
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from engines.asyncdiff import AsyncClock, embeddings_changed, predecessor_rows
from engines.base import EngineShapes, EngineUnavailableError, ModelError
from engines.loading import ModelSpec
from engines.parallel_settings import DeviceSettings, ParallelMode
from engines.stage_transport import WorkerLostError, flush_sends, recv_tensors, send_tensors
from engines.stage_worker import (CONFIG_KEY, GO_KEY, OP_ASYNC, OP_EXACT, OP_PIPELINE, OP_STATS, OP_STOP,
                                  STARTUP_WAIT_S, StageRunner, error_key, make_group, ready_key)
from engines.stages import StageState, UNetUnits, balanced_cuts, measure_unit_costs, stage_costs
from engines.torch_engine import TorchEngine

log = logging.getLogger("vcam.engines")

STARTUP_TIMEOUT_S = STARTUP_WAIT_S  # loading a real model on a slow disk; a worker that fails says so at once
STOP_TIMEOUT_S = 5.0
# How long a transfer may wait. Workers wait for rank 0's next call through every pause, skipped frame or slow
# VAE call, so this must not be short: a dead peer is seen at once anyway (its socket closes).
GROUP_TIMEOUT_S = 7 * 24 * 3600.0
QUIET_CHILD_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
                   "DIFFUSERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}


@dataclass(frozen=True)
class StageStats:
    """Per stage (rank order): compute seconds, seconds waiting on transfers, bytes sent, calls served."""

    names: tuple[str, ...]  # "embed..down_1.0" per stage
    compute_seconds: tuple[float, ...]
    comm_seconds: tuple[float, ...]
    bytes_sent: tuple[int, ...]
    calls: tuple[int, ...]
    predicted_costs: tuple[float, ...]  # the measured unit costs summed per stage, seconds (what the split used)

    def per_call_since(self, before: "StageStats") -> list[dict[str, object]]:
        """Per stage: compute and transfer-wait milliseconds and bytes sent, per call since `before`."""
        figures = []
        for index, name in enumerate(self.names):
            calls = max(1, self.calls[index] - before.calls[index])
            figures.append({
                "units": name,
                "compute_ms_per_call": round(1000 * (self.compute_seconds[index] - before.compute_seconds[index])
                                             / calls, 2),
                "transfer_wait_ms_per_call": round(1000 * (self.comm_seconds[index] - before.comm_seconds[index])
                                                   / calls, 2),
                "bytes_sent_per_call": (self.bytes_sent[index] - before.bytes_sent[index]) // calls,
            })
        return figures


class DistributedEngine:
    """An `Engine` whose UNet runs as N stages on N processes (see the module docstring)."""

    name = "torch-stages"

    def __init__(self, local: TorchEngine, unet: Any, spec: ModelSpec, settings: DeviceSettings,
                 threads: int, timeout_s: float = 60.0) -> None:
        """`timeout_s` bounds the rendezvous (TCPStore); transfers wait up to GROUP_TIMEOUT_S."""
        self._local = local
        self.shapes: EngineShapes = local.shapes
        self.device, self.dtype = local.device, local.dtype
        self.noise_schedule = local.noise_schedule
        self.latent_channels, self.vae_scale_factor = local.latent_channels, local.vae_scale_factor
        self.content_hash = local.content_hash
        self.settings = settings
        self.devices = settings.device_list()
        self.world = len(self.devices)
        self.units = UNetUnits(unet)
        if self.world > len(self.units):
            raise EngineUnavailableError(f"this UNet has {len(self.units)} units; use at most that many devices")
        self.unit_costs = measure_unit_costs(self.units, self._sample_inputs(), synchronize=self._synchronize())
        self.boundaries = balanced_cuts(self.unit_costs, self.world)
        self._runner = StageRunner(self.units, self.boundaries[0], self.boundaries[1])
        self._comm_device = self.device if settings.backend() == "nccl" else torch.device("cpu")
        self._mode: ParallelMode = settings.parallel
        self._clock = AsyncClock(settings.warmup, settings.stride)
        self._held: tuple[torch.Tensor, torch.Tensor] | None = None  # the (emb, context) the workers hold
        self._lost: str | None = None
        self._processes: dict[int, subprocess.Popen] = {}
        self._store = self._start_workers(spec, threads, timeout_s)
        self._group = make_group(self._store, 0, self.world, settings.backend(), GROUP_TIMEOUT_S)

    # --- start and stop ------------------------------------------------------------------------------------
    def _synchronize(self) -> Any:
        return torch.cuda.synchronize if self.device.type == "cuda" else None

    def _sample_inputs(self) -> StageState:
        """A batch of the built shape, to time each unit on."""
        s, factor = self.shapes, self.vae_scale_factor
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn(s.unet_batch, self.latent_channels, s.height // factor, s.width // factor,
                              generator=generator).to(self.device, self.dtype)
        context_dim = int(self.units.unet.config.cross_attention_dim)
        context = torch.randn(s.unet_batch, 77, context_dim, generator=generator).to(self.device, self.dtype)
        return StageState.inputs(latents, torch.full((s.unet_batch,), 500, device=self.device), context)

    def _start_workers(self, spec: ModelSpec, threads: int, timeout_s: float) -> Any:
        import torch.distributed as dist

        host, port = self.settings.rendezvous()
        store = dist.TCPStore(host, port, self.world, is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=timeout_s))
        config = {"spec": asdict(spec), "dtype": str(self.dtype).removeprefix("torch."), "devices": self.devices,
                  "boundaries": self.boundaries, "threads": threads, "backend": self.settings.backend(),
                  "timeout_s": GROUP_TIMEOUT_S}
        store.set(CONFIG_KEY, json.dumps(config))
        self.rendezvous = f"{host}:{store.port}"
        if not self.settings.hosts:
            env = {**os.environ, **QUIET_CHILD_ENV}
            for rank in range(1, self.world):
                command = [sys.executable, "-m", "engines.stage_worker", "--connect", f"127.0.0.1:{store.port}",
                           "--rank", str(rank), "--parent-pid", str(os.getpid())]
                self._processes[rank] = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
            # Workers must not outlive this engine, nor this process (they would only report a closed socket).
            weakref.finalize(self, _kill_processes, list(self._processes.values()))
        else:
            log.warning("waiting for %d stage worker(s); on each machine run: python -m engines.stage_worker "
                        "--connect %s --rank K (K = 1..%d)", self.world - 1, self.rendezvous, self.world - 1)
        try:
            self._wait_ready(store)
        except BaseException:
            self._kill_workers()
            raise
        store.set(GO_KEY, "1")
        return store

    def _wait_ready(self, store: Any) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        waiting = set(range(1, self.world))
        while waiting:
            for rank in sorted(waiting):
                if store.check([error_key(rank)]):
                    raise ModelError(f"stage worker {rank} could not start: {store.get(error_key(rank)).decode()}")
                if store.check([ready_key(rank)]):
                    waiting.discard(rank)
                    continue
                process = self._processes.get(rank)
                if process is not None and process.poll() is not None:
                    raise WorkerLostError(
                        f"stage worker {rank} ended while starting (exit code {process.returncode})")
            if time.monotonic() > deadline:
                raise WorkerLostError(f"stage workers {sorted(waiting)} did not connect within "
                                      f"{STARTUP_TIMEOUT_S:.0f} s to {self.rendezvous}")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the workers (politely, then by force after a few seconds). Idempotent."""
        if self._lost is None and self._processes is not None:
            try:
                self._broadcast_control(OP_STOP)
                flush_sends(self._runner.link)
            except RuntimeError:
                pass  # a worker already gone: it needs no stop
        self._kill_workers()
        self._lost = self._lost or "closed"

    def _kill_workers(self) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self._processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


    # --- the Engine interface ------------------------------------------------------------------------------
    def encode_prompt(self, texts: Sequence[str]) -> torch.Tensor:
        """Text encoder on rank 0 (see `TorchEngine.encode_prompt`)."""
        return self._local.encode_prompt(texts)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """VAE encoder on rank 0 (see `TorchEngine.encode_images`)."""
        return self._local.encode_images(images)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decoder on rank 0 (see `TorchEngine.decode_latents`)."""
        return self._local.decode_latents(latents)

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """UNet over the stages: (B, C, h, w), (B,), (B, 77, D) -> (B, C, h, w) epsilon (or v).

        Raises WorkerLostError (one line) when a worker stopped; later calls then run on rank 0 alone.
        """
        inputs = StageState.inputs(latents.to(self.device, self.dtype), timesteps.to(self.device),
                                   embeddings.to(self.device, self.dtype))
        if self._lost is not None:
            return self.units.run(inputs).sample
        try:
            if self._mode == "pipeline":
                return self._pipeline_call(inputs)
            return self._asyncdiff_call(inputs)
        except RuntimeError as error:
            raise self._worker_lost(error) from None

    @property
    def parallel(self) -> ParallelMode:
        """The schedule the next call uses: "pipeline" or "asyncdiff"."""
        return self._mode

    def set_parallel(self, mode: ParallelMode, warmup: int | None = None, stride: int | None = None) -> None:
        """Switch the schedule between calls; AsyncDiff restarts its warm-up."""
        self._mode = mode
        self._clock = AsyncClock(self._clock.warmup if warmup is None else warmup,
                                 self._clock.stride if stride is None else stride)

    def forget_previous_calls(self) -> None:
        """The stream restarted its batch (a reset after a cut, a rebuilt batch): AsyncDiff's stale stage inputs
        no longer describe the frames in it, so the next calls run exactly until the warm-up is over again."""
        self._clock.restart()

    # --- schedules -----------------------------------------------------------------------------------------
    def _broadcast_control(self, op: int, count: int = 1, exchange: bool = False,
                           embedded: StageState | None = None, extra: Sequence[torch.Tensor] = ()) -> None:
        """[op, count, exchange, embeddings follow] to every worker, then `extra`, then `embedded`'s time and text
        embeddings when they differ from what the workers hold (last: the int64 tensors stay 8-byte aligned in the
        message's buffer whatever the embeddings' sizes)."""
        embeddings: list[torch.Tensor] = []
        if embedded is not None and embeddings_changed(self._held, embedded.emb, embedded.context):
            embeddings, self._held = [embedded.emb, embedded.context], (embedded.emb, embedded.context)
        control = torch.tensor([op, count, int(exchange), int(bool(embeddings))], dtype=torch.int64)
        for rank in range(1, self.world):
            send_tensors(self._group, [control, *extra, *embeddings], rank, self._comm_device, self._runner.link)

    def _receive(self, src: int) -> list[torch.Tensor]:
        start = time.perf_counter()
        tensors = [t.to(self.device) for t in recv_tensors(self._group, src, self._comm_device)]
        self._runner.link.seconds += time.perf_counter() - start
        return tensors

    def _embed(self, inputs: StageState) -> StageState:
        """The embed unit (time and text embeddings, conv_in), timed as stage 0's compute."""
        start = time.perf_counter()
        embedded = self.units.run(inputs, 0, 1)
        self._runner.compute_seconds += time.perf_counter() - start
        return embedded

    def _run_stage_zero(self, embedded: StageState) -> StageState:
        """Stage 0 after its embed unit."""
        start = time.perf_counter()
        out = self.units.run(embedded, 1, self.boundaries[1])
        self._runner.compute_seconds += time.perf_counter() - start
        return out

    def _pipeline_call(self, inputs: StageState) -> torch.Tensor:
        rows = inputs.sample.shape[0]
        # one row at a time, as the micro-batches run: the same numbers as the rows run one by one
        embedded = [self._embed(StageState.inputs(inputs.sample[r:r + 1], inputs.emb[r:r + 1],
                                                  inputs.context[r:r + 1])) for r in range(rows)]
        whole = StageState(inputs.sample, (), torch.cat([e.emb for e in embedded]),
                           torch.cat([e.context for e in embedded]))
        self._broadcast_control(OP_PIPELINE, rows, embedded=whole)
        for part in embedded:
            send_tensors(self._group, self._run_stage_zero(part).activations(), 1, self._comm_device,
                         self._runner.link)
        output = torch.cat([self._receive(self.world - 1)[0] for _ in range(rows)])
        flush_sends(self._runner.link)
        self._runner.calls += 1
        return output

    def _asyncdiff_call(self, inputs: StageState) -> torch.Tensor:
        embedded = self._embed(inputs)
        kind = self._clock.next_call(embeddings_changed(self._held, embedded.emb, embedded.context))
        if kind == "exact":
            self._broadcast_control(OP_EXACT, embedded=embedded)
            send_tensors(self._group, self._run_stage_zero(embedded).activations(), 1, self._comm_device,
                         self._runner.link)
        else:
            self._broadcast_control(OP_ASYNC, 1, kind == "exchange", embedded, [predecessor_rows(inputs.emb)])
            if kind == "exchange":
                send_tensors(self._group, self._run_stage_zero(embedded).activations(), 1, self._comm_device,
                             self._runner.link)
        output = self._receive(self.world - 1)[0]
        flush_sends(self._runner.link)
        self._runner.calls += 1
        return output

    def _worker_lost(self, error: RuntimeError) -> WorkerLostError:
        """Name the worker that stopped, stop the others, and fall back to one device."""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and all(p.poll() is None for p in self._processes.values()):
            time.sleep(0.02)
        gone = [(rank, p.returncode) for rank, p in self._processes.items() if p.poll() is not None]
        if gone:
            rank, code = gone[0]
            what = f"stage worker {rank} ({self.devices[rank]}) stopped (exit code {code})"
        else:
            what = f"a stage worker stopped answering ({str(error).splitlines()[0][:120]})"
        self._lost = what
        for process in self._processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        return WorkerLostError(f"{what}; restart vcam, or run without --devices (this engine now runs the UNet "
                               "on one device)")

    # --- figures -------------------------------------------------------------------------------------------
    def stats(self) -> StageStats:
        """Per-stage compute and transfer figures since the start (asks every worker; rank 0 first)."""
        rows = [(self._runner.compute_seconds, self._runner.link.seconds, float(self._runner.link.bytes_sent),
                 float(self._runner.calls))]
        if self._lost is None:
            self._broadcast_control(OP_STATS)
            rows += [tuple(self._receive(rank)[0].tolist()) for rank in range(1, self.world)]
            flush_sends(self._runner.link)
        names = tuple(f"{self.units.names[a]}..{self.units.names[b - 1]}"
                      for a, b in zip(self.boundaries[:-1], self.boundaries[1:]))
        return StageStats(
            names=names, compute_seconds=tuple(r[0] for r in rows), comm_seconds=tuple(r[1] for r in rows),
            bytes_sent=tuple(int(r[2]) for r in rows), calls=tuple(int(r[3]) for r in rows),
            predicted_costs=tuple(stage_costs(self.unit_costs, self.boundaries)))


def _kill_processes(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def build_distributed_engine(spec: ModelSpec, shapes: EngineShapes, settings: DeviceSettings,
                             threads: int | None = None) -> DistributedEngine:
    """Load the model on rank 0's device, split the UNet by measured cost and start the workers.

    On the CPU the cores are shared: each process gets threads // N (at least one), `threads` defaulting to
    all cores.
    """
    from engines.devices import place
    from engines.loading import load_components

    devices = settings.device_list()
    per_process = max(1, (threads or os.cpu_count() or 1) // len(devices)) if devices[0] == "cpu" else threads
    placement = place(devices[0], per_process)
    components = load_components(spec, placement.device, placement.dtype)
    local = TorchEngine(components, shapes)
    return DistributedEngine(local, components.unet, spec, settings, threads=per_process or 1)
