"""The full checksum of a warm-started ONNX entry, on a background thread, and the repair of a corrupt one.

A warm start trusts each cached file whose size, mtime and inode are as built (`EngineCache.verify`): hashing a
multi-GB UNet graph would delay the first frame by seconds. But a stamp cannot see bytes changed in place with the
mtime put back (a failing disk, a copy tool that keeps times, tampering), and such a graph still loads and runs,
giving wrong pictures. So right after start every file of the entry is hashed here, while frames already flow.
On a mismatch: one line says why; on the CPU the calls go to the torch engine as soon as it is loaded (seconds), so
the corrupt graph stops being used long before the rebuild (a full re-export) ends; then the rebuilt graphs are
swapped back in. On a GPU the old graphs run until the rebuild is done (a CPU fallback would move every tensor).
"""
from __future__ import annotations

import threading

import torch

from engines.base import EngineShapes
from engines.engine_cache import EngineCache, log
from engines.loading import ModelSpec
from engines.graph_engine import GraphEngine
from engines.onnx_engine import build_graph_set
from engines.onnx_export import first_line


def start_cache_check(engine: GraphEngine, spec: ModelSpec, shapes: EngineShapes, cache: EngineCache
                      ) -> threading.Thread:
    """Run `check_and_repair` on a daemon thread (it must never hold up an exit); `engine.checked` is set at its end."""
    thread = threading.Thread(target=check_and_repair, args=(engine, spec, shapes, cache),
                              name="engine-cache-check", daemon=True)
    thread.start()
    return thread


def check_and_repair(engine: GraphEngine, spec: ModelSpec, shapes: EngineShapes, cache: EngineCache) -> None:
    """Hash every file of the engine's entry; if one fails, fall back to torch (CPU), rebuild and swap back."""
    graphs = engine.graphs
    on_cpu = engine.device.type == "cpu"
    fell_back = False
    try:
        problem = cache.verify(graphs.cache_key, rehash=True)
        if not problem:
            return
        meanwhile = "torch runs until then" if on_cpu else "the old graphs run until then"
        reason = f"{problem}, found by the full check after start ({meanwhile})"
        if on_cpu:
            engine.use_runner(_torch_fallback(spec, shapes))
            fell_back = True
        # The rebuild leaves torch's process-wide thread count alone (see onnx_engine._export_from_torch): setting
        # and restoring it from this thread would resize the pool the live stream's glue is running on meanwhile.
        rebuilt = build_graph_set(spec, shapes, cache, graphs.export, engine.threads, force_rebuild=reason)
        engine.use_runner(engine.make_runner(rebuilt))
        log.info(f"engine cache: the rebuilt {cache.describe(graphs.cache_key)} is in use")
    except Exception as error:  # noqa: BLE001 - a background thread: say it, keep the stream running
        still = "torch keeps running" if fell_back else "the graphs in use keep running"
        log.warning(f"engine cache: the check or rebuild of the {cache.describe(graphs.cache_key)} failed "
                    f"({first_line(error)}); {still}; delete the cache folder to rebuild at the next start")
    finally:
        engine.checked.set()


def _torch_fallback(spec: ModelSpec, shapes: EngineShapes):
    """The torch engine on the CPU in fp32: the same device, dtype and numbers as the CPU graphs."""
    from engines.loading import load_components
    from engines.torch_engine import TorchEngine

    return TorchEngine(load_components(spec, "cpu", torch.float32), shapes)
