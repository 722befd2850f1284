"""Specification of the installers, run as a new user would: `installer/install.sh` into a temporary prefix with
PyTorch's index unreachable (a closed local port), then the installed `vcam --version`, `vcam doctor --json`, a
10-frame tiny run, and `--uninstall` leaving nothing behind. pip's wheel cache and find-links (PIP_FIND_LINKS) are
the machine's own, so torch comes from disk; the whole spec still takes minutes (pip unpacks ~1 GB).

`install.ps1` cannot run here (no PowerShell on any registry this machine reaches); it is parsed with tree-sitter's
PowerShell grammar, and what it calls is checked against what exists. The v4l2loopback script's --check and
--dry-run change nothing and are run for real.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.timeout(1800)
def test_install_run_and_uninstall_from_a_temporary_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix" / "vcam-env"
    prefix.parent.mkdir()
    (prefix.parent / "users-file.txt").write_text("not vcam's")
    env = {**os.environ, "VCAM_TORCH_INDEX": f"http://127.0.0.1:{_closed_port()}/whl/cpu",
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_STATE_HOME": str(tmp_path / "state"),
           "HF_HOME": str(tmp_path / "hf"), "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR",
                                                                           str(Path.home() / ".cache" / "pip"))}
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "VCAM_VENV", "DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(name, None)
    installed = subprocess.run(["bash", str(ROOT / "installer" / "install.sh"), "--prefix", str(prefix)],
                               capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1500)
    assert installed.returncode == 0, installed.stderr[-3000:]
    [fallback] = [line for line in installed.stdout.splitlines() if "cannot be reached" in line]
    assert fallback.startswith("vcam: PyTorch's index") and "configured pip index" in fallback
    vcam = prefix / "bin" / "vcam"

    version = subprocess.run([str(vcam), "--version"], capture_output=True, text=True, env=env, timeout=300)
    assert re.fullmatch(r"vcam \d+\.\d+\.\d+\S*\n", version.stdout)

    doctor = subprocess.run([str(vcam), "doctor", "--json"], capture_output=True, text=True, env=env, timeout=600)
    checks = {check["name"]: check for check in json.loads(doctor.stdout)["checks"]}
    assert doctor.returncode == 1  # the default preset's model is not on this machine
    assert "CPU build" in checks["torch"]["detail"] and checks["gpu"]["status"] == "WARN"
    assert checks["virtual camera"]["status"] == "WARN" and checks["model"]["status"] == "FAIL"

    out = tmp_path / "ten.mp4"
    run = subprocess.run([str(vcam), "run", "--model", "tiny", "--source", "sample", "--sink", str(out),
                          "--frames", "10", "--no-tray", "--no-hotkeys", "--quiet"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    video = cv2.VideoCapture(str(out))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    video.release()

    removed = subprocess.run(["bash", str(ROOT / "installer" / "install.sh"), "--prefix", str(prefix),
                              "--uninstall"], capture_output=True, text=True, env=env, timeout=600)
    assert removed.returncode == 0, removed.stderr
    assert not prefix.exists() and (prefix.parent / "users-file.txt").read_text() == "not vcam's"
    assert not (tmp_path / "cache" / "vcam").exists() and not (tmp_path / "state" / "vcam").exists()
    assert "kept your presets in" in removed.stdout
    assert not (ROOT / "vcam.egg-info").exists()


def test_install_ps1_parses_as_powershell_and_calls_only_what_exists() -> None:
    tree_sitter = pytest.importorskip("tree_sitter")
    grammar = pytest.importorskip("tree_sitter_powershell")
    script = (ROOT / "installer" / "install.ps1").read_bytes()
    tree = tree_sitter.Parser(tree_sitter.Language(grammar.language())).parse(script)
    assert not tree.root_node.has_error
    broken = tree_sitter.Parser(tree_sitter.Language(grammar.language())).parse(script.replace(b"}", b"", 1))
    assert broken.root_node.has_error  # the parser can say no
    text = script.decode()
    for bashism in ("&&", "||", "\nfi\n", "export ", "$(dirname"):
        assert bashism not in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'tensorrt = [' in pyproject and 'test = [' in pyproject  # the extras it installs
    for subcommand in ("service uninstall --only-for", "doctor --preset tiny", "demo --out"):
        assert subcommand in text
    from vcam.cli import build_parser

    build_parser().parse_args(["service", "uninstall", "--only-for", "X"])
    build_parser().parse_args(["doctor", "--preset", "tiny"])


def test_v4l2loopback_check_and_dry_run_only_report(tmp_path: Path) -> None:
    script = ROOT / "installer" / "linux" / "setup-v4l2loopback.sh"
    check = subprocess.run(["bash", str(script), "--check"], capture_output=True, text=True, timeout=60)
    loaded = Path("/sys/module/v4l2loopback").is_dir()
    assert check.returncode == (0 if loaded else 1)
    assert all(line.split()[0] in ("OK", "WARN", "FAIL") for line in check.stdout.splitlines())
    dry = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0
    assert "modprobe v4l2loopback devices=1 video_nr=10 exclusive_caps=1 card_label=vcam" in dry.stdout
    assert "/etc/modules-load.d/vcam-v4l2loopback.conf" in dry.stdout
    assert "options v4l2loopback devices=1 video_nr=10 exclusive_caps=1 card_label=vcam" in dry.stdout
    assert not Path("/etc/modprobe.d/vcam-v4l2loopback.conf").exists() or loaded
