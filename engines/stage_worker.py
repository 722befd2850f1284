"""A stage worker: one process holding a contiguous range of UNet units, driven by rank 0 over torch.distributed.

Started by `DistributedEngine` itself (one per extra device), or by hand on another machine:

    python -m engines.stage_worker --connect ADDR:PORT --rank 1 [--device cuda:0] [--model PATH]

It reads the run's settings (model, dtype, stage boundaries) from rank 0's TCPStore, loads the model, keeps only
its own units, says it is ready, then serves calls until rank 0 says stop or goes away. Per call, rank 0 first
sends a control message [op, micro-batches, exchange, embeddings follow] naming the schedule (then the row map of
an AsyncDiff call), with the time and text embeddings of the whole batch last and only when they changed (a worker keeps the last ones: they are the same for
every call of one prompt and one batch layout), then the stage states flow rank 0 -> 1 -> ... -> N-1 -> 0:

- PIPELINE (exact): the UNet batch comes as M micro-batches (rows are independent within a call); the stage
  takes each from the stage before it, runs it and passes it on, so stage k works on micro-batch m while stage
  k+1 works on m-1.
- EXACT: the whole batch, in sequence (AsyncDiff's warm-up calls).
- ASYNC (AsyncDiff): the stage runs at once on what the stage before it produced at the last exchange, rows
  following their frames back (`engines.asyncdiff.rows_back`), with this call's embeddings; at an exchange it
  then takes the stage before it's output of this call for the next calls. Between exchanges (stride > 1) only
  the last stage runs.

Only the hidden state and the pending skip connections (the embeddings when they change) cross a cut; the last stage sends
back the UNet output only. Any failure ends the process, so a rank waiting on it gets an error, never a hang.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from engines.asyncdiff import rows_back, stale_state
from engines.stage_transport import LinkCounters, flush_sends, recv_tensors, send_tensors
from engines.stages import StageState, UNetUnits

OP_PIPELINE, OP_EXACT, OP_ASYNC, OP_STATS, OP_STOP = range(5)
CONFIG_KEY = "vcam/config"
GROUP_PREFIX = "vcam/stages"


def ready_key(rank: int) -> str:
    return f"vcam/ready/{rank}"


def error_key(rank: int) -> str:
    return f"vcam/error/{rank}"


STARTUP_WAIT_S = 600.0
GO_KEY = "vcam/go"  # set by rank 0 once every worker is ready: only then is the process group formed


def _exit_with_parent(parent: int) -> None:
    """A worker started by vcam ends when vcam does, whatever it is doing (loading, forming the group)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="vcam-parent-watch", daemon=True).start()


def make_group(store: Any, rank: int, world: int, backend: str, timeout_s: float) -> Any:
    """A process group of our own (no global default group), over gloo or NCCL."""
    import torch.distributed as dist

    prefixed = dist.PrefixStore(GROUP_PREFIX, store)
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, world, options)
    return dist.ProcessGroupGloo(prefixed, rank, world, timeout)


@dataclass
class StageRunner:
    """The units first..end-1 of one rank, and what it keeps between calls: the batch's time and text embeddings
    (re-sent only when they change) and AsyncDiff's stale input."""

    units: UNetUnits
    first: int
    end: int
    compute_seconds: float = 0.0
    calls: int = 0
    emb: torch.Tensor | None = None  # (B, E) time embeddings of the batch's rows
    context: torch.Tensor | None = None  # (B, tokens, D) text embeddings of the batch's rows
    pending: StageState | None = None  # the previous stage's output at the last exchange (AsyncDiff's stale input)
    pending_age: int = 0  # calls since `pending` was made
    link: LinkCounters = field(default_factory=LinkCounters)

    def run(self, state: StageState) -> StageState:
        start = time.perf_counter()
        out = self.units.run(state, self.first, self.end)
        self.compute_seconds += time.perf_counter() - start
        return out

    def received(self, activations: list[torch.Tensor], rows: slice = slice(None)) -> StageState:
        """A stage state from its transported activations [sample, *residuals] and the held embeddings' `rows`."""
        if self.emb is None or self.context is None:
            raise RuntimeError("a stage state arrived before any embeddings")
        return StageState(activations[0], tuple(activations[1:]), self.emb[rows], self.context[rows])

    def run_stale(self, one_call: torch.Tensor) -> StageState:
        """AsyncDiff: this stage on its input of the last exchange, each row following its frame back."""
        if self.pending is None or self.emb is None or self.context is None:
            raise RuntimeError("an asynchronous call needs one exact call before it")
        return self.run(stale_state(self.pending, rows_back(one_call, self.pending_age), self.emb, self.context))


def serve(group: Any, rank: int, world: int, runner: StageRunner, device: torch.device,
          compute_device: torch.device) -> None:
    """Answer rank 0's calls until OP_STOP (see the module docstring for the schedules). `device` is where
    transfers happen (the CPU for gloo, the GPU for NCCL), `compute_device` where the units run."""
    previous, following = rank - 1, (rank + 1) % world
    last = rank == world - 1

    def forward(state: StageState) -> None:
        send_tensors(group, [state.sample] if last else state.activations(), following, device, runner.link)

    def receive(src: int) -> list[torch.Tensor]:
        start = time.perf_counter()
        tensors = [t.to(compute_device) for t in recv_tensors(group, src, device)]
        runner.link.seconds += time.perf_counter() - start
        return tensors

    while True:
        control, *extra = receive(0)
        op, microbatches, exchange, embeddings_follow = (int(v) for v in control.tolist())
        if embeddings_follow:
            *extra, runner.emb, runner.context = extra
        if op == OP_STOP:
            return
        if op == OP_STATS:
            stats = [runner.compute_seconds, runner.link.seconds, float(runner.link.bytes_sent), float(runner.calls)]
            send_tensors(group, [torch.tensor(stats, dtype=torch.float64)], 0, device, runner.link)
        elif op == OP_PIPELINE:
            for row in range(microbatches):
                forward(runner.run(runner.received(receive(previous), slice(row, row + 1))))
            runner.calls += 1
        elif op == OP_EXACT:
            runner.pending, runner.pending_age = runner.received(receive(previous)), 0
            forward(runner.run(runner.pending))
            runner.calls += 1
        elif op == OP_ASYNC:
            (one_call,) = extra
            runner.pending_age += 1
            if exchange or last:
                forward(runner.run_stale(one_call))
            if exchange:
                runner.pending, runner.pending_age = runner.received(receive(previous)), 0
            runner.calls += 1
        flush_sends(runner.link)


def _load_units(config: dict, device: torch.device, model_override: str | None) -> UNetUnits:
    from engines.loading import ModelSpec, load_components

    spec = ModelSpec(**{**config["spec"], "lora": tuple(config["spec"]["lora"])})
    if model_override:
        spec = ModelSpec(model=model_override, vae=None, lora=spec.lora, lora_scale=spec.lora_scale,
                         tokenizer=spec.tokenizer)
    components = load_components(spec, device, getattr(torch, config["dtype"]))
    return UNetUnits(components.unet)


def main(argv: list[str] | None = None) -> int:
    import torch.distributed as dist

    parser = argparse.ArgumentParser(prog="python -m engines.stage_worker", description=__doc__.split("\n")[0])
    parser.add_argument("--connect", required=True, help="ADDR:PORT of rank 0's rendezvous (vcam prints it)")
    parser.add_argument("--rank", type=int, required=True, help="this worker's rank (1 .. N-1)")
    parser.add_argument("--device", help="device of this worker (default: the one rank 0 assigned)")
    parser.add_argument("--model", help="the model's path on this machine, if it differs from rank 0's")
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # set by vcam for the workers it starts
    args = parser.parse_args(argv)
    if args.parent_pid:
        _exit_with_parent(args.parent_pid)
    host, port = args.connect.rsplit(":", 1)
    store = dist.TCPStore(host, int(port), is_master=False, timeout=datetime.timedelta(seconds=60))
    config = json.loads(store.get(CONFIG_KEY))
    rank, world = args.rank, len(config["devices"])
    try:
        device = torch.device(args.device or config["devices"][rank])
        if device.type == "cpu":
            torch.set_flush_denormal(True)
            torch.set_num_threads(int(config["threads"]))
        elif device.type == "cuda":
            torch.cuda.set_device(device)
        runner = StageRunner(_load_units(config, device, args.model), *config["boundaries"][rank: rank + 2])
    except Exception as error:  # noqa: BLE001 - reported to rank 0 as one line, then this process ends
        store.set(error_key(rank), f"{type(error).__name__}: {error}".splitlines()[0])
        return 1
    store.set(ready_key(rank), str(os.getpid()))
    # Raises when rank 0 is gone before the group is formed (the store lives in rank 0); other workers may still be
    # loading (on other machines, started minutes later), hence the long wait.
    store.wait([GO_KEY], datetime.timedelta(seconds=STARTUP_WAIT_S))
    comm_device = device if config["backend"] == "nccl" else torch.device("cpu")
    group = make_group(store, rank, world, config["backend"], float(config["timeout_s"]))
    code = 0
    try:
        serve(group, rank, world, runner, comm_device, device)
    except RuntimeError as error:  # rank 0 or a neighbour went away: nothing left to serve
        print(f"vcam stage worker {rank}: stopping: {str(error).splitlines()[0]}", file=sys.stderr)
        code = 1
    # Leave without running destructors: tearing down a process group whose peer is gone can block for good
    # (seen with gloo: orphaned workers spinning after rank 0 was killed).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
