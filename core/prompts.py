"""Prompt embeddings: `PromptCache` (text -> embeddings, LRU) and `PromptSwitcher` (hot-swap at frame boundaries).

The text encoder is slow next to a stream-batch step, and a live switch must never stall the inference thread.
So every text is encoded once per cache (one cache per model), misses are encoded on the thread that asks for the
switch, and the inference thread only picks up finished embeddings at its next frame boundary.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch

TextEncoder = Callable[[Sequence[str]], torch.Tensor]  # (N,) texts -> (N, L, D), e.g. Engine.encode_prompt

# Texts per text-encoder call. The encoder's activations grow with the batch (a preset with 10,000 prompts in one
# call took 4.4 GB); a few texts per call keep the peak small, and encoding is per text anyway.
ENCODE_CHUNK = 16


class PromptCache:
    """Least-recently-used map text -> (1, L, D) embeddings; thread-safe; a hit never calls `encode`.

    Memory is bounded twice: at most `capacity` embeddings are kept, and the encoder is never called with more
    than `ENCODE_CHUNK` texts at once.
    """

    def __init__(self, encode: TextEncoder, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"prompt cache capacity must be at least 1, got {capacity}")
        self._encode = encode
        self.capacity = capacity
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        # Held while encoding, so two threads asking for the same new text encode it once, not twice.
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, text: str) -> bool:
        with self._lock:
            return text in self._entries

    def get(self, text: str) -> torch.Tensor:
        """The (1, L, D) embeddings of `text`, encoding it on a miss."""
        return self.get_many([text])[0]

    def prefill(self, texts: Sequence[str]) -> int:
        """Encode ahead the first `capacity` distinct texts not cached yet (e.g. a preset's prompts, in order),
        `ENCODE_CHUNK` per encoder call; returns how many distinct texts of `texts` are now cached.

        Texts beyond the capacity are left to be encoded on first use: pre-encoding them would only evict the
        first ones again, after paying for all of them.
        """
        ahead = list(dict.fromkeys(texts))[: self.capacity]
        self.get_many(ahead)
        return len(ahead)

    def get_many(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Embeddings of each text, in order; misses go to the encoder in batches of `ENCODE_CHUNK`, each text at
        most once."""
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._entries]
            self.hits += sum(1 for t in texts if t in self._entries)
            self.misses += len(missing)
            # Every embedding asked for is held here until returned, even when more than `capacity` were asked.
            found = {t: self._entries[t] for t in texts if t in self._entries}
            for start in range(0, len(missing), ENCODE_CHUNK):
                chunk = missing[start : start + ENCODE_CHUNK]
                encoded = self._encode(chunk)
                if encoded.dim() != 3 or encoded.shape[0] != len(chunk):
                    raise ValueError(
                        f"text encoder returned shape {tuple(encoded.shape)} for {len(chunk)} texts; "
                        "expected (texts, tokens, dim)"
                    )
                for i, text in enumerate(chunk):
                    found[text] = encoded[i : i + 1].detach().clone()  # (1, L, D), owns its memory
                    self._entries[text] = found[text]
                self._evict()
            result = [found[t] for t in texts]
            for text in texts:
                if text in self._entries:
                    self._entries.move_to_end(text)
            self._evict()
            return result

    def _evict(self) -> None:
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


class FrameEmbeddings(NamedTuple):
    """What one frame (one group of F frames) is generated with; `version` changes iff an embedding changed."""

    cond: torch.Tensor  # (1, L, D)
    uncond: torch.Tensor  # (1, L, D)
    version: int


@dataclass(frozen=True)
class _Blend:
    start: torch.Tensor  # (1, L, D): the embedding shown when the switch took effect
    target: torch.Tensor  # (1, L, D)
    frames: int  # N
    done: int = 0  # frames of the blend already produced


class PromptSwitcher:
    """Hot-swaps the prompt between frames. `switch` may be called from any thread; `frame_embeddings` is called
    by the stream once per frame boundary and is the only place a switch takes effect.

    Blending over N frames: the k-th frame after the switch (k = 1..N) uses lerp(start, target, k / N), where
    start is the embedding of the frame before the switch (mid-blend too), so the first frame already moves and
    frame N is exactly the target. A newer switch queued before a boundary replaces an older one not yet applied.
    """

    def __init__(self, cache: PromptCache, negative_prompt: str = "", prompt: str = "") -> None:
        self.cache = cache
        cond, uncond = cache.get_many([prompt, negative_prompt])
        self._lock = threading.Lock()
        self._text = prompt
        self._negative_text = negative_prompt
        self._cond = cond
        self._uncond = uncond
        self._version = 0
        self._blend: _Blend | None = None
        self._pending: tuple[str, torch.Tensor, int] | None = None  # (text, embeddings, blend frames)
        self._pending_negative: tuple[str, torch.Tensor] | None = None

    @property
    def text(self) -> str:
        """The prompt the frames are (or, blending, are becoming) generated with."""
        with self._lock:
            return self._text

    @property
    def negative_prompt(self) -> str:
        with self._lock:
            return self._negative_text

    @property
    def blending(self) -> bool:
        with self._lock:
            return self._blend is not None

    def switch(self, text: str, blend_frames: int = 0) -> None:
        """Use `text` from the next frame boundary on, blended in over `blend_frames` frames (0: at once).

        Encodes on the calling thread (a cache miss costs the caller, never the inference thread).
        """
        if blend_frames < 0:
            raise ValueError(f"blend_frames must be 0 or more, got {blend_frames}")
        embeddings = self.cache.get(text)
        with self._lock:
            self._pending = (text, embeddings, blend_frames)

    def set_negative_prompt(self, text: str) -> None:
        """Use `text` as the negative prompt from the next frame boundary on (encoded on the calling thread)."""
        embeddings = self.cache.get(text)
        with self._lock:
            self._pending_negative = (text, embeddings)

    def frame_embeddings(self) -> FrameEmbeddings:
        """Cross a frame boundary: apply what was queued, advance a blend by one frame, return this frame's."""
        with self._lock:
            changed = False
            if self._pending_negative is not None:
                self._negative_text, self._uncond = self._pending_negative
                self._pending_negative = None
                changed = True
            if self._pending is not None:
                text, target, frames = self._pending
                self._pending = None
                self._text = text
                if frames == 0:
                    self._blend = None
                    changed = changed or not torch.equal(self._cond, target)
                    self._cond = target
                else:
                    self._blend = _Blend(start=self._cond, target=target, frames=frames)
            if self._blend is not None:
                blend = self._blend
                done = blend.done + 1
                self._cond = torch.lerp(blend.start, blend.target, done / blend.frames)
                if done >= blend.frames:
                    self._cond = blend.target  # exact, not a rounded lerp
                    self._blend = None
                else:
                    self._blend = _Blend(blend.start, blend.target, blend.frames, done)
                changed = True
            if changed:
                self._version += 1
            return FrameEmbeddings(self._cond, self._uncond, self._version)
