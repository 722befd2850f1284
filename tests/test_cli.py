"""The `vcam` command as a user runs it: a real subprocess, the real tiny model, real files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.stops import start_vcam
from tests.media import read_video


def run_vcam(*args: str, env_home: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        XDG_CACHE_HOME=str(env_home / "cache"),
        XDG_CONFIG_HOME=str(env_home / "config"),
        XDG_STATE_HOME=str(env_home / "state"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="2",
    )
    env.pop("DISPLAY", None)
    return subprocess.run(
        [sys.executable, "-m", "vcam.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.mark.timeout(400)
def test_run_writes_a_playable_video_with_the_frames_asked_for(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    result = run_vcam("run", "--model", "tiny", "--source", "synthetic", "--sink", str(out), "--frames", "12",
                      "--width", "128", "--height", "128", "--no-tray", "--no-hotkeys", "--quiet", env_home=home)
    assert result.returncode == 0, result.stderr
    frames = read_video(out)
    assert len(frames) == 12
    assert frames[0].shape == (720, 1280, 3)  # the sink's configured size, whatever the model's
    assert max(float(f.std()) for f in frames) > 1.0  # pictures, not a blank stream


@pytest.mark.timeout(400)
def test_bench_json_reports_every_field(home: Path) -> None:
    result = run_vcam("bench", "--model", "tiny", "--frames", "12", "--width", "128", "--height", "128", "--json",
                      env_home=home)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("model", "engine", "precision", "width", "height", "steps", "guidance", "frame_buffer_size",
                "frames", "seconds", "fps", "model_only_fps", "efficiency", "unet_calls", "skipped", "latency_ms_p50",
                "latency_ms_p95", "peak_rss_mb", "build_seconds"):
        assert key in report, key
    assert report["frames"] == 12
    assert report["engine"] == "torch" and report["precision"] == "fp32"  # the tiny preset: torch, the default auto
    assert report["width"] == 128 and report["steps"] == 1  # the tiny preset's one step
    assert report["efficiency"] == pytest.approx(report["fps"] / report["model_only_fps"], rel=1e-2)
    assert report["unet_calls"] + report["skipped"] >= 12
    assert 0 < report["peak_rss_mb"] < 4000
    assert report["scheduler"] == "lcm" and report["t_index_list"] and report["num_inference_steps"] is None


def test_bench_says_which_solver_ran_and_its_schedule(home: Path) -> None:
    result = run_vcam("bench", "--model", "tiny", "--scheduler", "dpmsolver++", "--steps", "4", "--frames", "4",
                      "--width", "128", "--height", "128", "--json", "--no-progress", env_home=home)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["scheduler"] == "dpmsolver++" and report["num_inference_steps"] == 4
    assert report["steps"] == 2 and report["t_index_list"] is None  # strength 0.5 of 4 steps: 2 slots


@pytest.mark.parametrize(
    "args, words",
    [
        (("--model", "/nonexistent/model"), ["/nonexistent/model"]),
        (("--model", "tiny", "--cfg", "full", "--t-index-list", "45,32"), ["t_index_list", "increasing"]),
        (("--model", "tiny", "--width", "100"), ["multiples of 8"]),
        (("--model", "tiny", "--source", "/nonexistent/clip.mp4"), ["/nonexistent/clip.mp4"]),
        (("--model", "tiny", "--strength", "1.5", "--steps", "2"), ["strength"]),
        (("--preset", "no-such-preset"), ["no-such-preset"]),
        (("--model", "tiny", "--guidance-scale", "nan"), ["--guidance-scale", "finite"]),
        (("--model", "tiny", "--output-fps", "inf"), ["--output-fps", "finite"]),
    ],
)
@pytest.mark.timeout(120)
def test_bad_input_is_one_clear_line_not_a_traceback(home: Path, tmp_path: Path, args, words) -> None:
    result = run_vcam("run", *args, "--sink", str(tmp_path / "x.mp4"), "--frames", "2", "--no-tray", "--no-hotkeys",
                      "--quiet", env_home=home)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vcam: error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0]


@pytest.mark.timeout(120)
def test_a_similarity_threshold_of_1_is_one_line_naming_the_option_or_the_file_and_key(home: Path,
                                                                                         tmp_path: Path) -> None:
    # The filter's skip probability divides by 1 - threshold: the one range (core.config.SimilarityFilterConfig)
    # stops 1.0 wherever it is written, and the line says where it was written.
    preset = tmp_path / "still.toml"
    preset.write_text('[model]\nmodel = "tiny"\n\n[filter]\nthreshold = 1.0\n\n'
                      '[[prompts]]\nname = "a"\ntext = "a watercolour painting"\n')
    for args, words in ((("--model", "tiny", "--ssf-threshold", "1.0"), ["--ssf-threshold", "below 1.0", "1.0"]),
                        (("--preset", str(preset)), [str(preset), "filter.threshold", "below 1.0"])):
        result = run_vcam("run", *args, "--sink", str(tmp_path / "x.mp4"), "--frames", "2", "--no-tray",
                          "--no-hotkeys", "--quiet", env_home=home, timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vcam: error: "), result.stderr
        for word in words:
            assert word in lines[0], (word, lines[0])


@pytest.mark.timeout(400)
def test_run_without_preset_runs_the_users_default_preset_and_says_so_once(tmp_path: Path) -> None:
    presets = tmp_path / "config" / "vcam" / "presets"
    presets.mkdir(parents=True)
    (presets / "small.toml").write_text('[model]\nmodel = "tiny"\n\n[stream]\nwidth = 256\nheight = 256\n\n'
                                        '[output]\nwidth = 320\nheight = 240\n\n'
                                        '[[prompts]]\nname = "a"\ntext = "a watercolour painting"\n')
    assert run_vcam("presets", "default", "small", env_home=tmp_path).returncode == 0
    out = tmp_path / "out.mp4"
    result = run_vcam("run", "--source", "synthetic", "--sink", str(out), "--frames", "2", "--no-tray",
                      "--no-hotkeys", "--quiet", env_home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [frame.shape for frame in read_video(out)] == [(240, 320, 3)] * 2  # the default preset's output size
    notes = [line for line in result.stderr.splitlines() if "your default" in line]
    assert notes == [f"vcam: note: preset 'small': your default, set in {tmp_path / 'config' / 'vcam' / 'default-preset'}"]

def test_presets_lists_the_shipped_presets(home: Path) -> None:
    result = run_vcam("presets", env_home=home)
    assert result.returncode == 0, result.stderr
    for name in ("tiny", "sd-turbo-1step", "sd-turbo-2step", "lcm-lora-sd15"):
        assert name in result.stdout


@pytest.mark.parametrize("args", [("run", "--guidance", "bogus"), ("run", "--t-index-list", ""),
                                  ("bench", "--width", "abc"), ("nonsense",)])
def test_an_option_mistake_is_one_line_naming_the_option_and_exit_2(args: tuple[str, ...], home: Path) -> None:
    result = run_vcam(*args, env_home=home, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vcam: error: "), result.stderr
    assert "--help" in lines[0] and "usage:" not in result.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (("demo", "--style", "neon"), "vcam: error: unrecognized arguments: --style neon (see vcam demo --help)"),
    (("demo", "--width", "abc"),
     "vcam: error: demo: argument --width: invalid int value: 'abc' (see vcam demo --help)"),
    (("nonsense",), "vcam: error: argument COMMAND: invalid choice: 'nonsense'"),
])
def test_an_unknown_option_points_at_its_subcommands_help_and_names_vcam_once(args, expected, home: Path) -> None:
    result = run_vcam(*args, env_home=home, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(expected), result.stderr
    assert result.stderr.count("vcam:") == 1, result.stderr


def test_version_prints_the_installed_version(home: Path) -> None:
    from importlib.metadata import version

    result = run_vcam("--version", env_home=home, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"vcam {version('vcam')}"


def imported_modules(args: tuple[str, ...], home: Path) -> set[str]:
    """The modules `vcam ARGS` imported (python -X importtime), after checking it answered (0) or refused (2)."""
    env = {**os.environ, "XDG_STATE_HOME": str(home / "state"), "XDG_CONFIG_HOME": str(home / "config")}
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "vcam", *args], capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode in (0, 2), result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "vcam.cli" in imported  # the measurement saw the program's own imports
    return imported


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("presets",), ("run", "--cfg", "bogus"),
                                  ("bench", "--width", "abc")])
def test_quick_answers_never_import_torch(args: tuple[str, ...], home: Path) -> None:
    """--help, --version, presets and option mistakes answer at once: torch (seconds to import) stays unloaded."""
    assert not {"torch", "diffusers", "transformers", "onnxruntime", "cv2"} & imported_modules(args, home)


@pytest.mark.parametrize("args", [("run", "--width", "130"), ("bench", "--t-index-list", "99"),
                                  ("run", "--model", "/no/such/model"), ("presets", "default", "no-such-preset"),
                                  ("doctor", "--preset", "no-such-preset"), ("run", "--sink", "out.xyz"),
                                  ("run", "--sink", "/no/such/folder/out.mp4"), ("run", "--sink", "mjpeg:abc"),
                                  ("run", "--source", "/no/such/clip.mp4"),
                                  ("run", "--model", "tiny", "--sink", "/no/such/folder/out.mp4"),
                                  ("demo", "--model", "/no/such/model"), ("demo", "--out", "/no/such/folder")])
def test_mistakes_found_in_the_settings_or_the_model_files_answer_before_torch_loads(args, home: Path) -> None:
    """The settings (and the model's files) are checked before the model libraries load: a mistake there is one
    line in well under a second, not after seconds of importing torch. (OpenCV, milliseconds, loads with the
    settings' sources and sinks.)"""
    assert not {"torch", "diffusers", "transformers", "onnxruntime"} & imported_modules(args, home)


@pytest.mark.timeout(400)
def test_settings_that_change_nothing_are_each_said_once_in_one_line(home: Path) -> None:
    long_prompt = " ".join(["a watercolor painting of a quiet harbour at dawn"] * 12)
    result = run_vcam("bench", "--model", "tiny", "--guidance", "full", "--guidance-scale", "1",
                      "--negative-prompt", "blurry", "--prompt", long_prompt, "--frames", "2", "--width", "64",
                      "--height", "64", "--no-progress", env_home=home)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    runs_as_none = [line for line in lines if "guidance full at guidance scale 1 runs as none" in line]
    negative = [line for line in lines if "the negative prompt has no effect" in line]
    cut = [line for line in lines if "the text encoder reads the first 75" in line]
    assert len(runs_as_none) == 1 and len(negative) == 1 and len(cut) == 1, result.stderr
    assert "guidance scale 1 <= 1" in negative[0]
    assert "a watercolor painting of a quiet harb..." in cut[0] and "shorten it" in cut[0]
    # the 76th token is inside "quiet": the line quotes the prompt's own words from there, never a token fragment
    assert "the words from 'quiet harbour at' on" in cut[0] and cut[0].startswith("vcam: note: ")


def test_a_prompt_the_encoder_reads_whole_is_not_reported(home: Path) -> None:
    result = run_vcam("bench", "--model", "tiny", "--prompt", "a watercolor painting", "--frames", "1", "--width",
                      "64", "--height", "64", "--no-progress", env_home=home)
    assert result.returncode == 0, result.stderr
    assert "note" not in result.stderr and "tokens" not in result.stderr


def test_a_fatal_error_is_one_line_on_the_terminal_and_its_traceback_in_the_log(tmp_path: Path) -> None:
    result = run_vcam("run", "--model", "tiny", "--source", "/nonexistent/clip.mp4", "--sink", "null", "--frames",
                      "1", "--no-tray", "--no-hotkeys", "--quiet", env_home=tmp_path, timeout=240)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    log = (tmp_path / "state" / "vcam" / "logs" / "vcam.log").read_text(encoding="utf-8")
    assert "vcam run ended with an error: SourceError" in log and "/nonexistent/clip.mp4" in log
    assert "Traceback (most recent call last)" in log


@pytest.mark.timeout(400)
def test_mjpeg_on_any_free_port_prints_the_url_a_browser_can_open(home: Path) -> None:
    import re
    import signal
    import urllib.request

    process = start_vcam({"DISPLAY": "", "XDG_CACHE_HOME": str(home / "cache"),
                          "XDG_STATE_HOME": str(home / "state"), "HF_HUB_OFFLINE": "1"}, "--no-tray")
    try:
        line = process.wait_for_line("output: mjpeg", timeout=300)[-1]
        url = re.search(r"http://127\.0\.0\.1:(\d+)/stream\.mjpg", line)
        assert url is not None and int(url.group(1)) != 0, line
        snapshot = url.group(0).replace("stream.mjpg", "frame.jpg")
        with urllib.request.urlopen(snapshot, timeout=60) as response:
            jpeg = response.read()
        picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and picture.shape == (720, 1280, 3)
    finally:
        process.send_signal(signal.SIGINT)
        process.finish(timeout=120)


@pytest.mark.timeout(300)
def test_a_privileged_port_says_it_needs_a_port_from_1024_up(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "vcam", "run", "--model", "tiny", "--source", "synthetic", "--sink", "mjpeg:81",
               "--no-tray", "--no-hotkeys", "--quiet"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # root may bind port 81: run without the capability to, as every other user runs (util-linux's setpriv)
        command = ["setpriv", "--inh-caps=-net_bind_service", "--bounding-set=-net_bind_service", *command]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_STATE_HOME": str(tmp_path / "state"), "HF_HUB_OFFLINE": "1"}
    env.pop("DISPLAY", None)
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    stderr = result.stderr
    assert result.returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("vcam: error:")]
    assert len(errors) == 1 and "127.0.0.1:81" in errors[0], stderr
    assert "below 1024" in errors[0] and "mjpeg:8090" in errors[0] and "another program" not in errors[0]


@pytest.mark.timeout(900)
def test_the_first_onnx_runtime_build_in_bench_shows_a_bar_naming_what_it_builds(tmp_path: Path) -> None:
    result = run_vcam("bench", "--model", "tiny", "--engine", "onnxruntime", "--frames", "1", "--width", "64",
                      "--height", "64", "--threads", "2", "--json", env_home=tmp_path,
                      timeout=800)  # an empty cache: the graphs are built
    assert result.returncode == 0, result.stderr
    for step in ("loading tiny in torch", "the text_encoder graph", "the unet graph"):
        assert f"building: {step}" in result.stderr or f"building: exporting and checking {step}" in result.stderr
    assert "step" in result.stderr  # tqdm's counter: "2/5 [...step/s]"
    # The model's own pool, not torch's single thread of glue (vcam.runtime), is what the report names.
    assert json.loads(result.stdout.strip().splitlines()[-1])["threads"] == 2


@pytest.mark.timeout(600)
def test_frame_k_of_the_written_file_is_the_stylised_input_frame_k(home: Path, tmp_path: Path) -> None:
    """No warm-up frames in a file: the input switches colour at frame 6, and so does the output, at frame 6."""
    from tests.media import coloured_frame, mean_colour, write_video

    frames = [coloured_frame((230, 40, 40) if k < 6 else (40, 60, 230), 320, 240) for k in range(12)]
    clip, out = write_video(tmp_path / "in.avi", frames), tmp_path / "out.mp4"
    result = run_vcam("run", "--model", "tiny", "--source", str(clip), "--sink", str(out), "--frames", "12",
                      "--no-ssf", "--no-tray", "--no-hotkeys", "--quiet", env_home=home)
    assert result.returncode == 0, result.stderr
    written = read_video(out)
    assert len(written) == 12
    steps = [float(np.abs(mean_colour(b) - mean_colour(a)).sum()) for a, b in zip(written, written[1:])]
    assert int(np.argmax(steps)) == 5, steps  # the change is between output frames 5 and 6, as in the input
    assert max(steps[:5]) < steps[5] / 4 and max(steps[6:]) < steps[5] / 4  # and the first frame is not grey


@pytest.mark.timeout(600)
def test_frames_with_a_live_output_counts_stylised_frames(home: Path) -> None:
    env = {"DISPLAY": "", "XDG_CACHE_HOME": str(home / "cache"), "XDG_STATE_HOME": str(home / "state"),
           "HF_HUB_OFFLINE": "1"}
    process = start_vcam(env, "--no-tray", "--frames", "3")
    stderr = process.finish(timeout=500)
    assert process.returncode == 0, stderr
    assert "first stylised frame" in stderr
    assert "vcam: 3 stylised frames" in stderr, stderr


def test_a_reader_that_leaves_the_pipe_early_is_not_reported_as_a_bug(home: Path) -> None:
    # `vcam presets | head -1`: the reader is gone before vcam writes; a piped tool just ends (status 141).
    env = dict(os.environ, XDG_CONFIG_HOME=str(home / "config"), XDG_STATE_HOME=str(home / "state"))
    process = subprocess.Popen([sys.executable, "-m", "vcam.cli", "presets"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    process.stdout.close()  # before the interpreter has even started: every write meets a closed pipe
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141, stderr
    assert stderr == ""


@pytest.mark.timeout(400)
def test_on_a_terminal_every_notice_starts_a_line_of_its_own_beside_the_status_line(home: Path) -> None:
    """The status line is redrawn in place (no newline): notices said while it is up ("model ready", "first
    stylised frame") must erase it and take their own line, not be glued onto it."""
    import pty

    primary, secondary = pty.openpty()
    env = {**os.environ, "XDG_CACHE_HOME": str(home / "cache"), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_STATE_HOME": str(home / "state"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    env.pop("DISPLAY", None)
    run = subprocess.Popen([sys.executable, "-m", "vcam.cli", "run", "--model", "tiny", "--width", "64", "--height",
                            "64", "--sink", "mjpeg:0", "--frames", "3", "--no-tray", "--no-hotkeys"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary, env=env)
    os.close(secondary)
    said = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the process closed its end of the terminal
            break
        if not chunk:
            break
        said += chunk
    os.close(primary)
    assert run.wait(timeout=120) == 0
    text = said.decode("utf-8", "replace")
    assert " fps | " in text, "a status line was drawn"
    starts = [index for index in range(len(text)) if text.startswith("vcam: ", index)]
    assert starts and all(index == 0 or text[:index].endswith(("\n", "\x1b[2K")) for index in starts), text


def test_the_cli_makes_openmp_threads_wait_without_spinning_unless_the_user_chose(monkeypatch) -> None:
    # a live run on a busy machine was 6x slower than the benchmark with spinning OpenMP waits (README, Benchmarks)
    from vcam.cli import main

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
