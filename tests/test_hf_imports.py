"""The model loads while another thread builds the prompt tokenizer: diffusers' and transformers' lazy imports on
two threads at once once left the model unable to start ("cannot import name 'PreTrainedModel'")."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A fresh process (nothing imported yet): thread A loads the tiny model; thread B builds its prompt tokenizer the
# moment A is inside the import of `WATCHED` — the interleaving that failed every time before the lock.
RACE = """
import sys, threading, time
import torch
from engines.loading import ModelSpec, load_components
from engines.prompt_tokens import PromptLength

spec, watched, errors = ModelSpec("tiny"), sys.argv[1], []

def load_model():
    try:
        load_components(spec, "cpu", torch.float32)
    except Exception as error:
        errors.append(f"model: {error!r}"[:300])

def build_tokenizer():
    deadline = time.monotonic() + 120
    while watched not in sys.modules and time.monotonic() < deadline:
        time.sleep(0.0005)
    try:
        PromptLength.for_model(spec)
    except Exception as error:
        errors.append(f"tokenizer: {error!r}"[:300])

threads = [threading.Thread(target=load_model), threading.Thread(target=build_tokenizer)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(errors)
sys.exit(1 if errors else 0)
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("watched", ["diffusers.models"])  # "transformers" failed too; one costs 30 s
def test_the_model_loads_while_another_thread_builds_the_prompt_tokenizer(watched: str) -> None:
    run = subprocess.run([sys.executable, "-c", RACE, watched], cwd=ROOT, capture_output=True, text=True,
                         timeout=540)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
