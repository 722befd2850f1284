"""Which engine cache entries can never be used again, and removing them (`vcam models prune`).

The cache is keyed by everything that changes a built engine (`engines.engine_cache`), so an entry made by another
torch / onnx / ONNX Runtime / TensorRT version or an older exporter is never looked up again: it only takes disk
(an SD 1.5 graph set is ~4 GB). Those are stale, as are entries whose manifest or files are damaged (they would be
rebuilt anyway) and staging folders left by killed builds. Entries for other models, sizes or LoRAs are kept: they
are valid and a later run may want them (`everything=True` removes all).
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from engines.engine_cache import MANIFEST_NAME, RETIRED_PREFIX, STAGING_PREFIX, EngineCache, EngineCacheKey, \
    LoraFingerprint


@dataclass(frozen=True)
class StaleEntry:
    """An entry directory and why it is stale (one clause, for the report line)."""

    path: Path
    reason: str
    size_bytes: int = 0


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _key_from(manifest: dict) -> EngineCacheKey:
    fields = dict(manifest["key"])
    fields["loras"] = tuple(LoraFingerprint(**lora) for lora in fields.get("loras", ()))
    return EngineCacheKey(**fields)


def _runtime_mismatch(key: EngineCacheKey) -> str:
    """Why the installed runtimes would never look this key up, or ""."""
    from engines.onnx_engine import onnx_backend_version
    from engines.onnx_export import EXPORTER_VERSION

    if key.exporter_version != EXPORTER_VERSION:
        return f"made by exporter version {key.exporter_version} (now {EXPORTER_VERSION})"
    graphs_version, trt_version = key.backend_version, ""
    if key.backend == "tensorrt":
        graphs_version, _, trt_version = key.backend_version.rpartition("+trt")
        if importlib.util.find_spec("tensorrt") is None:
            return "a TensorRT plan, and TensorRT is not installed"
        import tensorrt

        if trt_version != tensorrt.__version__:
            return f"built with TensorRT {trt_version} (installed: {tensorrt.__version__})"
    exporter = graphs_version.rsplit("+", 1)[-1]
    installed = onnx_backend_version(exporter)
    if graphs_version != installed:
        return f"made with {graphs_version} (installed: {installed})"
    return ""


def find_stale(cache: EngineCache, everything: bool = False) -> list[StaleEntry]:
    """The entries under the cache root that `prune` removes, with the reason for each."""
    from engines.openvino_engine import KERNEL_CACHE_DIR

    stale = []
    try:
        directories = sorted(p for p in cache.root.iterdir() if p.is_dir())
    except OSError:
        return stale
    for directory in directories:
        if directory.name.startswith((STAGING_PREFIX, RETIRED_PREFIX)):
            continue  # EngineCache.remove_stale_staging decides those: a live build may own one
        if everything:
            stale.append(StaleEntry(directory, "removing everything (--all)", _size(directory)))
            continue
        if directory.name == KERNEL_CACHE_DIR:  # at the root: where older versions kept every entry's kernels
            stale.append(StaleEntry(directory, "OpenVINO kernels in the folder older versions shared (each graph "
                                               "entry keeps its own now)", _size(directory)))
            continue
        try:
            key = _key_from(json.loads((directory / MANIFEST_NAME).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            stale.append(StaleEntry(directory, f"no readable manifest ({type(error).__name__})", _size(directory)))
            continue
        reason = _runtime_mismatch(key) or cache.verify(key)
        if reason:
            stale.append(StaleEntry(directory, reason, _size(directory)))
    return stale


def prune(cache: EngineCache, everything: bool = False, dry_run: bool = False) -> list[StaleEntry]:
    """Remove the stale entries (and staging left by killed builds); returns what was (or would be) removed."""
    stale = find_stale(cache, everything)
    if dry_run:
        return stale
    removed = [StaleEntry(path, "left by a build that did not finish") for path in cache.remove_stale_staging()]
    for entry in stale:
        shutil.rmtree(entry.path, ignore_errors=True)
    return removed + stale
