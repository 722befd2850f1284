"""The on-disk cache of built engines (ONNX graphs, TensorRT plans), keyed by everything that changes them.

Building an engine takes seconds (ONNX export) to many minutes (TensorRT); reusing one that was built for a
different model, LoRA, resolution, batch, precision or runtime version gives wrong pictures or a crash. So the key
is every such input, hashed, and an entry is only used after its manifest and file checksums are verified: a
corrupt, partial or incompatible entry is rebuilt, never used, and the rebuild says why in one line (logger
`vcam.engines`; engines never print, so `vcam bench --json` stays parseable). Entries are written in a staging
directory and renamed into place, so a crash mid-build leaves no half-written entry under a valid name; the staging
directory records its builder's PID, so one left by a killed build is removed by the next build. A cache root that
cannot be written (read-only disk, immutable folder, a file in the way) does not stop a rebuild: it happens in a
private temporary root for this run only, said in one line.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import platformdirs

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1  # bump when the manifest layout itself changes
OWNER_NAME = ".vcam-owner"  # in a staging directory: {"pid", "host"} of the process building it
STAGING_PREFIX = ".building-"
RETIRED_PREFIX = ".retired-"
# A staging directory untouched this long whose builder is gone is debris. Builders write files as they go, so a
# live build keeps its directory's mtime fresh; the PID check keeps a slow TensorRT build of a live process safe.
STALE_STAGING_SECONDS = 600.0

log = logging.getLogger("vcam.engines")
Rehash = bool | Callable[[str], bool]  # which files `verify` hashes even when their stamp is unchanged


@dataclass(frozen=True)
class LoraFingerprint:
    """One LoRA as far as an engine cares: which weights (content hash) fused at what scale."""

    content_hash: str
    scale: float


@dataclass(frozen=True)
class EngineCacheKey:
    """Every input that changes a built engine. Two keys that differ in any field name different cache entries."""

    model_hash: str  # content hash of the model weights + configs (from engines.loading)
    width: int
    height: int
    frame_batch: int  # F
    unet_batch: int  # T*F, 2*T*F (RCFG full) or (T+1)*F (RCFG initialize)
    text_batch: int
    precision: Literal["fp32", "fp16", "int8"]
    backend: str  # "onnx", "onnxruntime", "tensorrt"
    backend_version: str  # onnx / onnxruntime / TensorRT version: graphs and plans are not portable across them
    opset: int
    exporter_version: str  # our exporter: a change in what we export invalidates old entries
    gpu_model: str = ""  # TensorRT plans only run on the GPU model they were built on
    loras: tuple[LoraFingerprint, ...] = ()

    def digest(self) -> str:
        """A short stable name for the entry: the SHA-256 of the key's canonical JSON."""
        canonical = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:24]

    def as_json(self) -> dict:
        fields = asdict(self)
        fields["loras"] = [asdict(lora) for lora in self.loras]
        return fields


@dataclass(frozen=True)
class CacheEntry:
    """A verified cache entry: its directory, whether it was just built, and what the builder reported."""

    path: Path
    built: bool  # False: loaded from the cache without rebuilding
    build_report: dict = field(default_factory=dict)
    rebuilt_because: str = ""  # why an existing entry was not used ("" when it was used or none existed)


def default_cache_root() -> Path:
    """`<user cache dir>/vcam/engines`; tests and `--cache-dir` pass their own root instead."""
    return Path(platformdirs.user_cache_dir("vcam")) / "engines"


def _stamp(stat: os.stat_result) -> list[int]:
    """What changes whenever a file is written or replaced: size, modification time (ns) and inode."""
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class EngineCache:
    """Engine entries under one root directory, one subdirectory per key digest."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()

    def describe(self, key: EngineCacheKey) -> str:
        """How a line names an entry: `onnx entry 1a2b... in /root/of/the/cache`."""
        return f"{key.backend} entry {key.digest()} in {self.root}"

    def entry_dir(self, key: EngineCacheKey) -> Path:
        return self.root / f"{key.backend}-{key.digest()}"

    def verify(self, key: EngineCacheKey, rehash: Rehash = False) -> str:
        """Why the entry for `key` cannot be used, or "" when it is complete and intact.

        A file whose size, mtime and inode are still those recorded at build time is not re-hashed (hashing a
        3 GB UNet graph would cost seconds of every start); any write to it changes the stamp, and then its
        SHA-256 decides. `rehash=True` hashes every file regardless; a predicate hashes the files it accepts
        (by manifest name, e.g. "unet.onnx", "tokenizer/vocab.json").
        """
        entry = self.entry_dir(key)
        manifest_path = entry / MANIFEST_NAME
        if not entry.is_dir():
            return "no entry"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as error:
            return f"manifest unreadable ({type(error).__name__})"
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("key") != key.as_json():
            return "manifest does not match the key"
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            return "manifest lists no files"
        for name, expected in files.items():
            path = entry / name
            if not path.is_file():
                return f"{name} is missing"
            stat = path.stat()
            if stat.st_size != expected.get("bytes"):
                return f"{name} fails its checksum (size changed)"
            forced = rehash(name) if callable(rehash) else rehash
            if (forced or _stamp(stat) != expected.get("stamp")) and file_sha256(path) != expected.get("sha256"):
                return f"{name} fails its checksum"
        return ""

    def read_report(self, key: EngineCacheKey) -> dict:
        manifest = json.loads((self.entry_dir(key) / MANIFEST_NAME).read_text())
        return dict(manifest.get("build_report", {}))

    def get_or_build(self, key: EngineCacheKey, build: Callable[[Path], dict], rehash: Rehash = False) -> CacheEntry:
        """The verified entry for `key`, building it with `build(directory) -> build_report` when needed.

        `rehash` as in `verify`: files that must be hashed before use (those a background check cannot cover).
        `build` writes its files into the (temporary) directory it is given and returns a JSON-able report
        (export times, check differences); the report is stored in the manifest and returned on later hits.
        """
        self.remove_stale_staging()
        problem = self.verify(key, rehash=rehash)
        if not problem:
            return CacheEntry(self.entry_dir(key), built=False, build_report=self.read_report(key))
        return self.rebuild(key, build, reason="" if problem == "no entry" else problem)

    def rebuild(self, key: EngineCacheKey, build: Callable[[Path], dict], reason: str = "") -> CacheEntry:
        """Build the entry for `key` from scratch and swap it in atomically, replacing any existing one.

        Also used when an entry passed its checksums but failed to load (e.g. written by another runtime).
        A non-empty `reason` (why the existing entry is not used) is said in one line before the build starts.
        """
        if reason:
            log.warning(f"engine cache: rebuilding the {self.describe(key)}: {reason}")
        self.remove_stale_staging()
        staging = self._make_staging()
        try:
            started = time.perf_counter()
            report = dict(build(staging))
            report.setdefault("build_seconds", round(time.perf_counter() - started, 3))
            files = {  # renaming the staging directory keeps each file's inode and mtime, so stamps stay valid
                path.relative_to(staging).as_posix(): {
                    "bytes": path.stat().st_size, "sha256": file_sha256(path), "stamp": _stamp(path.stat()),
                }
                for path in sorted(staging.rglob("*"))
                if path.is_file() and path.name != OWNER_NAME
            }
            manifest = {
                "format": MANIFEST_FORMAT,
                "key": key.as_json(),
                "files": files,
                "build_report": report,
                "built_at": time.time(),
            }
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            (staging / OWNER_NAME).unlink(missing_ok=True)
            destination = self.entry_dir(key)
            self._replace(destination, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return CacheEntry(destination, built=True, build_report=report, rebuilt_because=reason)

    def _make_staging(self) -> Path:
        """A new staging directory owned by this process, under the root or, if it cannot be written, a temporary one.

        Writability is found out by trying: `os.access` says yes to root even for an immutable folder, and the
        build itself is the first write, so anything less than creating the directory would be a guess.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        except OSError as error:
            fallback = Path(tempfile.mkdtemp(prefix="vcam-engines-"))
            atexit.register(shutil.rmtree, fallback, ignore_errors=True)
            why = f"{type(error).__name__}: {error.strerror or error}"
            log.warning(f"engine cache: {self.root} cannot be written ({why}); building in {fallback} for this run "
                        "only (make the cache folder writable to keep builds)")
            self.root = fallback
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        (staging / OWNER_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        return staging

    def remove_stale_staging(self, max_age: float = STALE_STAGING_SECONDS) -> list[Path]:
        """Delete staging (and half-deleted retired) directories left by builds that were killed; returns them.

        A directory is stale when it has not changed for `max_age` seconds and no live process on this host owns
        it (its owner file names a PID that is gone, or it has none). Errors are ignored: a read-only cache is
        still usable, and a concurrent cleaner may win the race.
        """
        removed = []
        try:
            candidates = [p for p in self.root.iterdir() if p.name.startswith((STAGING_PREFIX, RETIRED_PREFIX))]
        except OSError:
            return removed
        for path in candidates:
            try:
                if time.time() - path.stat().st_mtime < max_age or _owner_alive(path / OWNER_NAME):
                    continue
                shutil.rmtree(path)
            except OSError:
                continue
            log.info(f"engine cache: removed {path.name}, left by a build that did not finish")
            removed.append(path)
        return removed

    def _replace(self, destination: Path, staging: Path) -> None:
        """Move `staging` to `destination`; an old entry is first renamed aside so no reader sees a mix."""
        if destination.exists():
            retired = Path(tempfile.mkdtemp(prefix=RETIRED_PREFIX, dir=self.root))
            os.replace(destination, retired / "entry")
            shutil.rmtree(retired, ignore_errors=True)
        try:
            os.replace(staging, destination)
        except OSError:
            if not destination.is_dir():  # not a lost race with a concurrent builder of the same key
                raise
            shutil.rmtree(staging, ignore_errors=True)


def _owner_alive(owner_file: Path) -> bool:
    """Whether the process that wrote `owner_file` still runs (on another host: assumed so, it cannot be checked)."""
    try:
        owner = json.loads(owner_file.read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
