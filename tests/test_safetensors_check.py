"""The safetensors header check (`safetensors.safe_open`) refuses exactly the files the hand-written check did:
truncated, padded, empty and non-safetensors files, while complete files pass; one line naming the file."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from engines.base import ModelError
from engines.loading import check_safetensors


def old_header_check(path: Path) -> bool:
    """The check engines/loading.py did by hand before safe_open: the 8-byte header length, the JSON header,
    and the file size equal to header + the largest data offset. True when the file passed."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return False
        header_length = int.from_bytes(prefix, "little")
        if header_length <= 0 or 8 + header_length > size:
            return False
        try:
            header = json.loads(handle.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return False
    if not isinstance(header, dict):
        return False
    try:
        data_end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"),
                       default=0)
    except (TypeError, KeyError, IndexError):
        return False
    return 8 + header_length + data_end == size


def make_files(folder: Path) -> dict[str, Path]:
    good = folder / "good.safetensors"
    save_file({"a": torch.arange(1000, dtype=torch.float32).reshape(10, 100), "b": torch.ones(3)}, str(good))
    data = good.read_bytes()
    variants = {
        "good": data,
        "truncated": data[: len(data) // 2],
        "padded": data + b"\0\0\0\0",
        "empty": b"",
        "header only": data[:40],
        "text": b"this is not a safetensors file at all, just words" * 10,
        "json": b"{\"not\": \"a header\"}",
        "huge header length": (10**12).to_bytes(8, "little") + b"{}",
    }
    paths = {}
    for name, content in variants.items():
        path = folder / f"{name.replace(' ', '-')}.safetensors"
        path.write_bytes(content)
        paths[name] = path
    return paths


def test_safe_open_check_refuses_exactly_what_the_old_check_refused(tmp_path: Path) -> None:
    for name, path in make_files(tmp_path).items():
        try:
            check_safetensors(path)
            passed = True
        except ModelError as error:
            passed = False
            assert "\n" not in str(error) and str(path) in str(error) and "not a complete .safetensors" in str(error)
        assert passed == old_header_check(path), name
        assert passed == (name == "good"), name
