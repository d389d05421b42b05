"""SentencePiece BPE as llama.cpp's `llama` tokenizer model does it (llm_tokenizer_spm).

Spaces become U+2581 (a space is prefixed first, as `add_space_prefix` says), adjacent symbols are merged highest score
first, and a symbol that is not a token falls back to byte tokens <0xXX>.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from bitnet_ref.bpe import byte_text, cached_word, merge_pairs, utf8
from bitnet_ref.errors import TokenizerError

SPACE_MARK = "\u2581"  # SentencePiece's visible space
_SPM_WORD = re.compile(f"{SPACE_MARK}*[^{SPACE_MARK}]+|{SPACE_MARK}+")  # SentencePiece words: marks, then the rest


class SentencePiece:
    """SentencePiece BPE over a vocabulary's token texts, ids and scores (tokenizer.ggml.scores; None: all 0)."""

    def __init__(self, texts: Sequence[str], ids: Mapping[str, int], scores: np.ndarray | None,
                 add_space_prefix: bool) -> None:
        self._ids = ids
        self._add_space_prefix = add_space_prefix
        values = np.zeros(len(texts), np.float32) if scores is None else scores.astype(np.float32)
        self._neg_scores = {t: -float(s) for t, s in zip(texts, values.tolist(), strict=True)}
        self._byte_ids = [ids.get(f"<0x{b:02X}>", ids.get(byte_text(b))) for b in range(256)]
        # A merge can only cross a "x▁" boundary if some token spells a non-space followed by a space mark.
        self._by_word = not any(re.search(f"[^{SPACE_MARK}]{SPACE_MARK}", t) for t in texts)
        self._cache: dict[str, list[int]] = {}

    def encode(self, fragments: Iterable[str | int], out: list[int]) -> None:
        """Token ids of fragments: a space before text that starts the input or follows a special token."""
        prev_special = True
        for frag in fragments:
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            text = (" " + frag) if self._add_space_prefix and prev_special else frag
            self._encode_text(text.replace(" ", SPACE_MARK), out)
            prev_special = False

    def _encode_text(self, text: str, out: list[int]) -> None:
        """Merges of an escaped text, word by word where no token can span two words."""
        words = _SPM_WORD.findall(text) if self._by_word else [text]
        for word in words:
            out.extend(cached_word(self._cache, word, self._word))

    def _word(self, text: str) -> list[int]:
        """Token ids of an escaped text: highest-score merges, then byte fallback for what is not a token."""
        ids = []
        for sym in merge_pairs(list(text), self._neg_scores, ""):
            tid = self._ids.get(sym)
            if tid is not None:
                ids.append(tid)
                continue
            for b in utf8(sym):
                tid = self._byte_ids[b]
                if tid is None:
                    raise TokenizerError(f"byte 0x{b:02X} of {sym!r} has no token (<0x{b:02X}> or the byte itself)")
                ids.append(tid)
        return ids

    @staticmethod
    def piece(text: str) -> bytes:
        """Bytes of a NORMAL token: its text with U+2581 back to spaces."""
        return utf8(text.replace(SPACE_MARK, " "))
