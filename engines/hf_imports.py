"""Imports of diffusers and transformers that are safe from any thread.

Both libraries resolve their public names lazily: `from transformers import CLIPTokenizer` runs the package's
`_LazyModule.__getattr__`, which imports the submodule on first use. Two threads doing that at once are not safe:
with the model loading on one thread while the command thread built the prompt tokenizer, the loading thread
saw a half-initialised `transformers` ("cannot import name 'PreTrainedModel' from 'transformers'") and the model
never started (the soak, about one run in two on a busy machine). Every engine import of either library runs
under one re-entrant lock; once a name is resolved the lock is held for a dictionary look-up only.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

# Process-wide on purpose, like Python's own import machinery it guards: a lock per caller would not serialise.
_LAZY_IMPORTS = threading.RLock()


@contextmanager
def hf_imports() -> Iterator[None]:
    """Hold the lock for `from diffusers ...` / `from transformers ...` statements in the block."""
    with _LAZY_IMPORTS:
        yield
