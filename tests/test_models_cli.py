"""Specification of `vcam models list|pull|prune`.

`pull` runs the real huggingface_hub client in a real `vcam` process against a local server that answers like the
Hub (tests/hub_server.py, through HF_ENDPOINT), serving the shipped tiny model in the Hub's layout plus files that
must not be fetched (a pickle, a root-level checkpoint). Offline it is one line saying what to copy where.
`prune` runs on a real engine cache built with `EngineCache` in a temporary folder.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engines.cache_prune import find_stale, prune
from engines.engine_cache import MANIFEST_NAME, EngineCache, EngineCacheKey
from engines.loading import ModelSpec, resolve_model
from engines.onnx_engine import onnx_backend_version
from engines.onnx_export import EXPORTER_VERSION
from tests.hub_server import HubServer, repository_from_folder
from vcam.models_cli import files_to_fetch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "engines" / "tiny" / "weights"
REPO = "vcam-test/tiny"


def _vcam(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vcam.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=240)


def test_only_configs_and_one_safetensors_variant_per_folder_are_fetched() -> None:
    repo = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.bin",
            "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "tokenizer/merges.txt",
            "v1-5-pruned.safetensors", "v1-5-pruned.ckpt", "README.md"]
    assert files_to_fetch(repo) == ["model_index.json", "tokenizer/merges.txt", "unet/config.json",
                                    "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json",
                                    "vae/diffusion_pytorch_model.safetensors"]


def test_a_single_file_repository_keeps_its_checkpoint() -> None:
    assert files_to_fetch(["config.json", "taesd.safetensors", "taesd.pth"]) == ["config.json", "taesd.safetensors"]


def test_pull_fetches_the_model_from_the_hub_endpoint_with_a_progress_bar_and_it_loads(
        tmp_path: Path) -> None:
    files = repository_from_folder(TINY)
    files["unet/diffusion_pytorch_model.bin"] = b"a pickle vcam must never fetch"
    files["tiny-single-file.safetensors"] = b"the same weights again, as one checkpoint"
    with HubServer(REPO, files) as hub:
        result = _vcam(["models", "pull", REPO], {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stderr
    assert f"fetching {len(files) - 2} files of {REPO}" in result.stderr
    assert "100%" in result.stderr  # the progress bar ran to the end
    assert sorted(hub.fetched) == sorted(set(files) - {"unet/diffusion_pytorch_model.bin",
                                                        "tiny-single-file.safetensors"})
    snapshot = Path(result.stdout.split(" is in ")[-1].strip())
    assert snapshot.is_relative_to(tmp_path / "hf" / "hub" / "models--vcam-test--tiny")
    resolved = resolve_model(ModelSpec(model=str(snapshot)))  # complete and loadable as the shipped folder
    assert resolved.content_hash == resolve_model(ModelSpec(model=str(TINY))).content_hash


def test_pull_of_a_repository_the_hub_does_not_have_is_one_line(tmp_path: Path) -> None:
    with HubServer(REPO, repository_from_folder(TINY)) as hub:
        result = _vcam(["models", "pull", "vcam-test/nothing-here"], {"HF_ENDPOINT": hub.url,
                                                                      "HF_HOME": str(tmp_path)})
    assert result.returncode == 2 and result.stderr.splitlines() == [result.stderr.strip()]
    assert "no model 'vcam-test/nothing-here' on the Hub" in result.stderr


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("offline", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:{port}"}],
                         ids=["offline-mode", "endpoint-unreachable"])
def test_pull_offline_says_in_one_line_what_to_copy_where(tmp_path: Path, offline: dict[str, str]) -> None:
    env = {key: value.format(port=_closed_port()) for key, value in offline.items()}
    result = _vcam(["models", "pull", "sd-turbo-1step"], {**env, "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    # the preset's model and its VAE: everything still needed, not only the first repository tried
    assert line.startswith("vcam: error: cannot reach the Hugging Face Hub for stabilityai/sd-turbo and "
                           "madebyollin/taesd")
    assert "hf download stabilityai/sd-turbo " in line and "hf download madebyollin/taesd " in line
    assert "models--stabilityai--sd-turbo" in line and "models--madebyollin--taesd" in line
    assert line.endswith(f"into {tmp_path / 'hf' / 'hub'}")


def test_list_shows_each_presets_model_with_its_size_or_how_to_get_it(tmp_path: Path) -> None:
    result = _vcam(["models", "list"], {"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    [tiny] = [line for line in lines if line.startswith("tiny ")]
    assert " MB " in tiny and str(TINY) in tiny
    [turbo] = [line for line in lines if line.startswith("sd-turbo-1step ")]
    assert "missing (vcam models pull stabilityai/sd-turbo)" in turbo


def _key(**changes) -> EngineCacheKey:
    fields = dict(model_hash="m" * 32, width=256, height=256, frame_batch=1, unet_batch=2, text_batch=1,
                  precision="fp32", backend="onnx", backend_version=onnx_backend_version("dynamo"), opset=23,
                  exporter_version=EXPORTER_VERSION)
    return EngineCacheKey(**{**fields, **changes})


def _build(directory: Path) -> dict:
    (directory / "unet.onnx").write_bytes(b"graph" * 100)
    return {}


def test_prune_removes_entries_no_installed_runtime_can_use_and_keeps_the_usable_ones(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    usable = cache.get_or_build(_key(), _build).path
    other_size = cache.get_or_build(_key(width=512), _build).path  # another size: valid, kept
    old_runtime = cache.get_or_build(_key(backend_version="torch2.6.0+onnx1.17.0+ort1.19.0+dynamo"), _build).path
    old_exporter = cache.get_or_build(_key(exporter_version="0"), _build).path
    damaged = cache.get_or_build(_key(height=512), _build).path
    (damaged / "unet.onnx").write_bytes(b"cut")
    no_manifest = cache.get_or_build(_key(frame_batch=2), _build).path
    (no_manifest / MANIFEST_NAME).unlink()
    (usable / "openvino-kernels").mkdir()  # OpenVINO's blobs inside their entry: kept with it
    (usable / "openvino-kernels" / "1234.blob").write_bytes(b"kernels")
    shared_kernels = cache.root / "openvino-kernels"  # the folder older versions shared across entries
    shared_kernels.mkdir()
    (shared_kernels / "5678.blob").write_bytes(b"kernels")

    stale = {entry.path: entry.reason for entry in find_stale(cache)}
    assert set(stale) == {old_runtime, old_exporter, damaged, no_manifest, shared_kernels}
    assert "installed:" in stale[old_runtime] and "exporter version 0" in stale[old_exporter]
    assert "unet.onnx" in stale[damaged] and "manifest" in stale[no_manifest]
    assert "OpenVINO" in stale[shared_kernels]
    assert all(path.exists() for path in stale)  # finding removes nothing

    removed = prune(cache)
    assert {entry.path for entry in removed} == set(stale)
    assert sorted(p.name for p in cache.root.iterdir()) == sorted([usable.name, other_size.name])
    assert (usable / "openvino-kernels" / "1234.blob").is_file()
    assert all(entry.size_bytes > 0 for entry in removed)  # measured before removal, for the report line


def test_prune_all_and_dry_run_from_the_command_line(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "cache" / "vcam" / "engines")
    entry = cache.get_or_build(_key(), _build).path
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    dry = _vcam(["models", "prune", "--all", "--dry-run"], env)
    assert f"would remove {entry.name}" in dry.stdout and entry.exists()
    kept = _vcam(["models", "prune"], env)  # a usable entry is not stale
    assert "removed 0 engine cache entries" in kept.stdout and entry.exists()
    done = _vcam(["models", "prune", "--all"], env)
    assert done.returncode == 0 and f"removed {entry.name}" in done.stdout and not entry.exists()
