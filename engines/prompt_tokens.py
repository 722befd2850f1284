"""How much of a prompt the text encoder reads: SD's CLIP text encoder sees 77 tokens (its start and end tokens
included), and every engine pads or truncates a prompt to exactly that, so the words past the 75th token change
nothing. `PromptLength` finds those prompts with the model's own tokenizer (a vocabulary differs between models:
the tiny model's is small), so the run can say so once instead of cutting them silently.
"""
from __future__ import annotations

import re
from typing import Any

CLIP_CONTEXT = 77  # tokens the text encoder reads, start and end tokens included (SD 1.x / 2.x)
CONTENT_TOKENS = CLIP_CONTEXT - 2
WORD = re.compile(r"\w+")  # what counts as a word when the tokens read are matched back to the prompt


class PromptLength:
    """Counts a prompt's tokens with a model's CLIP tokenizer and words the notice for a prompt that is cut."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer  # transformers CLIPTokenizer

    @classmethod
    def for_model(cls, spec: Any) -> PromptLength:
        """The tokenizer the engine will use for `spec` (an `engines.loading.ModelSpec`), from local files only:
        a diffusers folder's `tokenizer/`, or the one a single-file checkpoint loads with. Raises ModelError."""
        from engines.hf_imports import hf_imports
        from engines.loading import hf_hub_cache_dir, resolve_model

        with hf_imports():
            from transformers import CLIPTokenizer

        resolved = resolve_model(spec)
        if resolved.kind == "folder":
            return cls(CLIPTokenizer.from_pretrained(resolved.path / "tokenizer", local_files_only=True))
        from engines.single_file import detect_architecture, load_tokenizer, read_shapes

        arch = detect_architecture(read_shapes(resolved.path))
        return cls(load_tokenizer(arch, resolved.path, resolved.tokenizer_path, hf_hub_cache_dir()))

    def tokens(self, text: str) -> int:
        """Tokens of `text` without the start and end tokens (the encoder reads at most CONTENT_TOKENS of them)."""
        return len(self._tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)

    def cut_notice(self, text: str) -> str | None:
        """One line naming where `text` is cut, or None when the encoder reads all of it."""
        ids = self._tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        if len(ids) <= CONTENT_TOKENS:
            return None
        return (f"the prompt {_short(text)!r} is {len(ids)} tokens and the text encoder reads the first "
                f"{CONTENT_TOKENS}: the words from {self._first_words_cut(text, ids)!r} on change nothing; "
                "shorten it")

    def _first_words_cut(self, text: str, ids: list[int]) -> str:
        """The prompt's own words from the first one the encoder does not read whole (a word cut between two of
        its tokens counts as cut), up to three of them: the user's spelling, never a fragment of a token."""
        read_words = len(WORD.findall(self._tokenizer.decode(ids[:CONTENT_TOKENS])))
        one_more = len(WORD.findall(self._tokenizer.decode(ids[:CONTENT_TOKENS + 1])))
        next_token = self._tokenizer.decode(ids[CONTENT_TOKENS:CONTENT_TOKENS + 1])
        continues_a_word = one_more == read_words and WORD.search(next_token) is not None
        first_cut = read_words - 1 if continues_a_word else read_words
        word_starts = [match.start() for match in WORD.finditer(text)]
        if not word_starts:
            return ""
        start = word_starts[min(max(first_cut, 0), len(word_starts) - 1)]
        return " ".join(text[start:].split()[:3])


def _short(text: str, chars: int = 40) -> str:
    return text if len(text) <= chars else text[:chars - 3] + "..."
