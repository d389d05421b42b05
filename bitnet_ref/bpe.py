"""Byte-level BPE as llama.cpp's `gpt2` tokenizer model does it (llm_tokenizer_bpe, llama_decode_text).

The text is cut into words by a pre-tokenizer (bitnet_ref.pretokenizer), each word's UTF-8 bytes are spelled in GPT-2's
byte alphabet, and adjacent symbols are merged lowest merge rank first. The pair merging is shared with SentencePiece
(bitnet_ref.spm), which merges by score instead of rank.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache

from bitnet_ref.pretokenizer import pre_tokenize

# ---------------------------------------------------------------------------------------------------------------------
# GPT-2's byte alphabet


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable unicode character (unicode_byte_to_utf8_map), in GPT-2's order:
    the printable bytes first, each standing for itself, then the other 68 as U+0100, U+0101, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


BYTE_CHARS = tuple(byte_to_unicode()[b] for b in range(256))  # the same alphabet indexed by byte
_BYTE_OF_CHAR = {c: b for b, c in enumerate(BYTE_CHARS)}
_LATIN1_TO_BYTE_CHAR = str.maketrans({b: c for b, c in enumerate(BYTE_CHARS)})


def encode_bytes(text: str) -> str:
    """A string's UTF-8 bytes spelled in GPT-2's byte alphabet (how byte-level BPE tokens and merges are written)."""
    return text.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTE_CHAR)


def byte_text(b: int) -> str:
    """A one-byte token text as a str (bytes >= 0x80 come back as surrogate escapes)."""
    return bytes([b]).decode("utf-8", "surrogateescape")


def utf8(text: str) -> bytes:
    """UTF-8 bytes of a token text (surrogate escapes back to their bytes)."""
    return text.encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------------------------------------
# Pair merging shared by BPE (rank: lower first) and SentencePiece (minus score: lower first)

_SHORT_WORD = 48  # symbols; longer words use the heap, as llama.cpp always does


def merge_pairs(symbols: list[str], table: Mapping[str, float], sep: str) -> list[str]:
    """Merge adjacent symbols while table[left + sep + right] exists, lowest value first, leftmost on ties."""
    if len(symbols) > _SHORT_WORD:
        return _merge_heap(symbols, table, sep)
    get = table.get
    while len(symbols) > 1:
        best, best_i = None, -1
        for i in range(len(symbols) - 1):
            v = get(symbols[i] + sep + symbols[i + 1])
            if v is not None and (best is None or v < best):
                best, best_i = v, i
        if best_i < 0:
            break
        symbols[best_i : best_i + 2] = [symbols[best_i] + symbols[best_i + 1]]
    return symbols


def _merge_heap(symbols: list[str], table: Mapping[str, float], sep: str) -> list[str]:
    """`merge_pairs` with llama.cpp's priority queue over a linked list of symbols (stale entries skipped)."""
    text = list(symbols)
    n = len(text)
    prev, nxt = list(range(-1, n - 1)), [*range(1, n), -1]
    heap: list[tuple[float, int, int, str]] = []

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0:
            v = table.get(text[left] + sep + text[right])
            if v is not None:
                heapq.heappush(heap, (v, left, right, text[left] + text[right]))

    for i in range(n - 1):
        push(i, i + 1)
    while heap:
        _, left, right, joined = heapq.heappop(heap)
        if not text[left] or not text[right] or text[left] + text[right] != joined:
            continue
        text[left], text[right] = joined, ""
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        push(prev[left], left)
        push(left, nxt[left])
    return [t for t in text if t]


# ---------------------------------------------------------------------------------------------------------------------
# The tokenizer model


WORD_CACHE = 100_000  # words whose token ids an encoder keeps; past that the cache starts over


def cached_word(cache: dict[str, list[int]], word: str, encode: Callable[[str], list[int]]) -> list[int]:
    """encode(word), remembered in cache (cleared when it holds WORD_CACHE words)."""
    ids = cache.get(word)
    if ids is None:
        ids = encode(word)
        if len(cache) > WORD_CACHE:
            cache.clear()
        cache[word] = ids
    return ids


class BPE:
    """Byte-level BPE over a vocabulary's token ids and merges ("a b", in rank order)."""

    def __init__(self, ids: Mapping[str, int], merges: Sequence[str], pre_kind: str, ignore_merges: bool) -> None:
        self._ids = ids
        # Merge "a b" -> rank (its index; the first of repeated merges wins).
        self.ranks = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1), strict=True))
        self._pre_kind = pre_kind
        self._ignore_merges = ignore_merges
        self._cache: dict[str, list[int]] = {}

    def encode(self, fragments: Iterable[str | int], out: list[int]) -> None:
        """Token ids of fragments: special-token ids as they are, text word by word (llm_tokenizer_bpe_session)."""
        for frag in fragments:
            if isinstance(frag, int):
                out.append(frag)
                continue
            for word in pre_tokenize(frag, self._pre_kind):
                out.extend(cached_word(self._cache, word, self._word))

    def _word(self, word: str) -> list[int]:
        """Token ids of one pre-tokenized word."""
        spelled = encode_bytes(word)
        if self._ignore_merges and spelled in self._ids:
            return [self._ids[spelled]]
        ids = []
        for sym in merge_pairs(list(spelled), self.ranks, " "):
            tid = self._ids.get(sym)
            if tid is not None:
                ids.append(tid)
                continue
            for b in utf8(sym):
                tid = self._ids.get(byte_text(b))
                if tid is not None:
                    ids.append(tid)
        return ids

    @staticmethod
    def piece(text: str) -> bytes:
        """Bytes of a NORMAL token (llama_decode_text, with its [UNK_BYTE_0x..] marker for foreign chars)."""
        out = bytearray()
        for ch in text:
            b = _BYTE_OF_CHAR.get(ch)
            if b is None:
                out += b"[UNK_BYTE_0x" + ch.encode("utf-8", "surrogateescape").hex().encode() + utf8(text) + b"]"
            else:
                out.append(b)
        return bytes(out)
