"""`vcam models list|pull|prune`: what each preset's model is on disk, fetching one, and clearing the engine cache.

`vcam run` never downloads (it is offline by design); `pull` is the one place vcam goes online, on request, into
the same Hugging Face cache the loader reads (`engines.loading.hf_hub_cache_dir`), through huggingface_hub (it
honours HF_ENDPOINT, proxies and tokens). Only what the loader reads is fetched: configs, tokenizer files and
safetensors weights (one variant per component: fp16 where the repository has it), never pickles.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path, PurePosixPath

WEIGHT_SUFFIX = ".safetensors"
CONFIG_SUFFIXES = (".json", ".txt")  # configs, model_index.json, tokenizer vocab/merges
PREFERRED_VARIANT = "fp16"  # half the download; the loader reads fp16-only folders (engines.weight_files)


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="the models on disk per preset; pull one; prune the engine cache")
    actions = models.add_subparsers(dest="models_action", metavar="ACTION", required=True)
    actions.add_parser("list", help="each preset's model and VAE: where on disk, size, or missing")
    pull = actions.add_parser("pull", help="fetch a preset's model (or an org/name id) into the Hugging Face cache")
    pull.add_argument("name", metavar="PRESET|ID", help="a preset name (its model and VAE) or a Hugging Face id")
    pull.add_argument("--no-progress", action="store_true", help="no progress bar")
    prune = actions.add_parser("prune", help="remove engine cache entries no installed runtime can use")
    prune.add_argument("--all", action="store_true", help="remove every engine cache entry")
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")


def _size_text(size: int) -> str:
    return f"{size / 2**30:.2f} GB" if size >= 2**30 else f"{size / 2**20:.1f} MB"


def _disk_size(path: Path) -> int:
    """Bytes on disk of a file or folder; Hub snapshots are symlinks into blobs, each blob counted once."""
    if path.is_file():
        return path.stat().st_size
    blobs = {p.resolve() for p in path.rglob("*") if p.is_file()}
    return sum(blob.stat().st_size for blob in blobs)


def _locate_line(name: str) -> str:
    """Where a model name is on this machine and its size, or why it is not usable."""
    from engines.base import ModelError
    from engines.loading import ModelSpec, resolve_model

    try:
        resolved = resolve_model(ModelSpec(model=name))
    except ModelError:
        if name.count("/") == 1 and not Path(name).expanduser().exists():
            return f"missing (vcam models pull {name})"
        return "missing or incomplete (see vcam doctor)"
    return f"{_size_text(_disk_size(resolved.path))}  {resolved.path}"


def list_models() -> int:
    from vcam.presets import list_presets, load_preset

    for info in list_presets():
        preset = load_preset(info.name)
        print(f"{info.name:<18} model {preset.model.model}: {_locate_line(preset.model.model)}")
        vae = preset.model.vae
        if vae and vae != "none":
            print(f"{'':<18} vae   {vae}: {_vae_line(vae)}")
    return 0


def _vae_line(name: str) -> str:
    from engines.base import ModelError
    from engines.loading import ModelSpec, resolve_model

    try:
        resolved = resolve_model(ModelSpec(model="tiny", vae=name))
    except ModelError:
        return f"missing (vcam models pull {name})" if name.count("/") == 1 else "missing"
    return f"{_size_text(_disk_size(resolved.vae_path))}  {resolved.vae_path}" if resolved.vae_path else "missing"


def files_to_fetch(repo_files: list[str]) -> list[str]:
    """The files of a Hub repository the loader reads: configs and tokenizer files, and safetensors weights, one
    variant per folder (fp16 when that folder has it). Root-level checkpoints beside a diffusers layout
    (`v1-5-pruned.safetensors` next to `model_index.json`) are the same weights again and are skipped."""
    diffusers_layout = "model_index.json" in repo_files
    chosen = [f for f in repo_files if f.endswith(CONFIG_SUFFIXES)]
    by_folder: dict[str, list[str]] = {}
    for name in repo_files:
        if name.endswith(WEIGHT_SUFFIX) or name.endswith(WEIGHT_SUFFIX + ".index.json"):
            by_folder.setdefault(str(PurePosixPath(name).parent), []).append(name)
    for folder, names in by_folder.items():
        if diffusers_layout and folder == ".":
            continue
        variant = [n for n in names if f".{PREFERRED_VARIANT}." in PurePosixPath(n).name]
        chosen += variant or [n for n in names if PurePosixPath(n).name.count(".") == 1 or ".index." in n]
    return sorted(set(chosen))


def _offline_line(repo_ids: list[str], cache: Path, reason: str) -> str:
    """One line for every repository still needed (a preset's model and its VAE): what to run, what to copy."""
    commands = " and ".join(f"`hf download {r} --include '*.json' '*.txt' '*.safetensors'`" for r in repo_ids)
    folders = " and ".join(f"~/.cache/huggingface/hub/models--{r.replace('/', '--')}" for r in repo_ids)
    its = "its folder" if len(repo_ids) == 1 else "their folders"
    return (f"cannot reach the Hugging Face Hub for {' and '.join(repo_ids)} ({reason}): on a machine with internet "
            f"run {commands}, then copy {its} {folders} into {cache}")


class HubUnreachable(Exception):
    """The Hub could not be reached for a repository; `reason` is the transport's one-line cause."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _network_errors() -> tuple[type[Exception], ...]:
    """What huggingface_hub raises when the endpoint cannot be reached: the transport errors of whichever HTTP
    client it uses (httpx2 in the newest releases, httpx from 1.0, requests before), each only if installed."""
    import importlib

    errors: list[type[Exception]] = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests.exceptions", "ConnectionError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def pull_repo(repo_id: str, progress: bool) -> Path:
    """Fetch `repo_id`'s loadable files into the Hub cache; raises HubUnreachable when the Hub cannot be reached,
    ModelError (one line) when the repository is unknown or has no safetensors."""
    if progress and "huggingface_hub" not in sys.modules:
        # `vcam` turns the Hub's progress bars off for every command (noise on a live run); here they are the point.
        os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError)

    from huggingface_hub.utils import logging as hub_logging

    from engines.base import ModelError
    from engines.loading import hf_hub_cache_dir

    hub_logging.set_verbosity_error()  # its retry warnings would bury the one line that says what to do
    cache = hf_hub_cache_dir()
    try:
        files = files_to_fetch(HfApi().list_repo_files(repo_id))
        if not any(f.endswith(WEIGHT_SUFFIX) for f in files):
            raise ModelError(f"{repo_id} has no .safetensors weights (vcam never loads pickled .bin/.ckpt files); "
                             "pick a repository that ships safetensors")
        print(f"vcam: fetching {len(files)} files of {repo_id} into {cache}", file=sys.stderr)
        return Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=files))
    except RepositoryNotFoundError:
        raise ModelError(f"no model {repo_id!r} on the Hub (check the name; a gated model needs `hf auth login`)") \
            from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, *_network_errors(), ConnectionError) as error:
        raise HubUnreachable(type(error).__name__) from None
    except HfHubHTTPError as error:
        raise HubUnreachable(str(error).splitlines()[0]) from None


def pull(name: str, progress: bool) -> int:
    """`name` is a preset (its model and VAE, where they are Hub ids) or a Hub id itself."""
    from engines.base import ModelError
    from engines.loading import HF_ID_PATTERN, TINY_MODELS
    from vcam.presets import PresetError, load_preset

    try:
        preset = load_preset(name)
        wanted = [preset.model.model, preset.model.vae]
    except PresetError:
        if not HF_ID_PATTERN.match(name):
            raise ModelError(f"{name!r} is neither a preset (vcam presets) nor a Hugging Face id org/name") from None
        wanted = [name]
    repos = [w for w in wanted if w and w not in TINY_MODELS and w.count("/") == 1 and not Path(w).exists()]
    if not repos:
        print(f"vcam: {name} needs nothing from the Hub (its model ships with vcam or is a local path)")
        return 0
    from engines.loading import hf_hub_cache_dir

    for index, repo_id in enumerate(repos):
        try:
            path = pull_repo(repo_id, progress)
        except HubUnreachable as error:  # the line names every repository still needed, not only this one
            raise ModelError(_offline_line(repos[index:], hf_hub_cache_dir(), error.reason)) from None
        print(f"vcam: {repo_id} is in {path}")
    return 0


def prune_cache(everything: bool, dry_run: bool) -> int:
    from engines.cache_prune import prune
    from engines.engine_cache import EngineCache

    cache = EngineCache()
    removed = prune(cache, everything=everything, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for entry in removed:
        print(f"vcam: {verb} {entry.path.name} ({_size_text(entry.size_bytes)}): {entry.reason}")
    total = sum(entry.size_bytes for entry in removed)
    print(f"vcam: {verb} {len(removed)} engine cache entries, {_size_text(total)}, from {cache.root}")
    return 0


def run_models_action(args: argparse.Namespace) -> int:
    """Dispatch `vcam models ACTION`."""
    if args.models_action == "list":
        return list_models()
    if args.models_action == "pull":
        return pull(args.name, progress=not args.no_progress)
    return prune_cache(args.all, args.dry_run)
