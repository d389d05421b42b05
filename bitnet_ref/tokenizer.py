"""Tokenizer built from GGUF metadata that gives llama.cpp's token ids and text (llama-vocab.cpp, unicode.cpp).

Two models, as `tokenizer.ggml.model` names them:
- `gpt2`: byte-level BPE. The text is cut into words by the pre-tokenizer `tokenizer.ggml.pre` names, each word's
  UTF-8 bytes are spelled in GPT-2's byte alphabet, and adjacent symbols are merged lowest merge rank first.
- `llama`: SentencePiece BPE. Spaces become U+2581 (a space is prefixed first, as `add_space_prefix` says), adjacent
  symbols are merged highest score first, and a symbol that is not a token falls back to byte tokens <0xXX>.
Special tokens (CONTROL, USER_DEFINED, UNKNOWN) are cut out of the text first, longest first. Decoding works on bytes
and turns them into a str (errors="replace") only at the end.

Character classes follow llama.cpp's own Unicode tables (Unicode 15.1): Python's unicodedata plus the characters that
Unicode 15.0 and 15.1 added (Python 3.11 ships Unicode 14.0). A Python whose unicodedata is newer than 15.1 would
class the characters added after 15.1, which llama.cpp treats as unassigned.
"""

from __future__ import annotations

import heapq
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from enum import IntFlag
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from bitnet_ref.constants import (
    KEY_ADD_BOS,
    KEY_ADD_EOS,
    KEY_BOS_ID,
    KEY_EOS_ID,
    KEY_MERGES,
    KEY_NAME,
    KEY_SCORES,
    KEY_TOKEN_TYPE,
    KEY_TOKENIZER_MODEL,
    KEY_TOKENIZER_PRE,
    KEY_TOKENS,
    KEY_UNK_ID,
    TokenType,
)
from bitnet_ref.errors import TokenizerError, TokenRangeError
from bitnet_ref.gguf_reader import read_gguf

KEY_ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"
KEY_EOT_ID = "tokenizer.ggml.eot_token_id"
KEY_EOM_ID = "tokenizer.ggml.eom_token_id"
KEY_FIM_PAD_ID = "tokenizer.ggml.fim_pad_token_id"
KEY_FIM_REP_ID = "tokenizer.ggml.fim_rep_token_id"
KEY_FIM_SEP_ID = "tokenizer.ggml.fim_sep_token_id"

MODEL_BPE = "gpt2"
MODEL_SPM = "llama"
PRE_DEFAULT = "default"
PRE_GPT2 = "gpt-2"
PRE_LLAMA3 = "llama3"
# llama.cpp's names for the pre-tokenizers this module implements (llama_vocab::impl::load).
LLAMA3_NAMES = (
    "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano",
)
GPT2_NAMES = ("gpt-2",)

SPACE_MARK = "\u2581"  # SentencePiece's visible space
C_SPACES = " \t\n\v\f\r"  # C isspace() in the "C" locale
_SPM_WORD = re.compile(f"{SPACE_MARK}*[^{SPACE_MARK}]+|{SPACE_MARK}+")  # SentencePiece words: marks, then the rest


class TokenAttr(IntFlag):
    """llama.cpp's token attributes (llama_token_attr) that tokenizing and decoding look at."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8


_ATTR_OF_TYPE = {
    TokenType.NORMAL: TokenAttr.NORMAL,
    TokenType.UNKNOWN: TokenAttr.UNKNOWN,
    TokenType.CONTROL: TokenAttr.CONTROL,
    TokenType.USER_DEFINED: TokenAttr.USER_DEFINED,
    TokenType.UNUSED: TokenAttr.UNUSED,
    TokenType.BYTE: TokenAttr.BYTE,
}
_SPECIAL = TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN  # cut out of the text before the model runs
_HIDDEN = TokenAttr.CONTROL | TokenAttr.UNKNOWN  # rendered only when special=True

# Token texts llama.cpp recognises by name (llama_vocab::impl::load); each found one becomes CONTROL.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
              "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_PRE_TEXTS = ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                  "<|code_prefix|>", "<|prefix|>")
_FIM_SUF_TEXTS = ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                  "<|code_suffix|>", "<|suffix|>")
_FIM_MID_TEXTS = ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                  "<|code_middle|>", "<|middle|>")
_FIM_PAD_TEXTS = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")
_FIM_REP_TEXTS = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")
_FIM_SEP_TEXTS = ("<|file_sep|>",)
_EOG_TEXTS = frozenset(("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
                        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
                        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
                        "<｜end▁of▁sentence｜>", "[e~["))
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss: USER_DEFINED

# ---------------------------------------------------------------------------------------------------------------------
# Unicode classes as llama.cpp's tables (unicode-data.cpp) have them

# Characters Unicode 15.0 and 15.1 added: (first, last, general category class). Used where unicodedata says Cn.
_UNICODE_15_ADDITIONS = (
    (0x0CF3, 0x0CF3, "M"), (0x0ECE, 0x0ECE, "M"), (0x2FFC, 0x2FFF, "S"), (0x31EF, 0x31EF, "S"),
    (0x10EFD, 0x10EFF, "M"), (0x1123F, 0x11240, "L"), (0x11241, 0x11241, "M"), (0x11B00, 0x11B09, "P"),
    (0x11F00, 0x11F01, "M"), (0x11F02, 0x11F02, "L"), (0x11F03, 0x11F03, "M"), (0x11F04, 0x11F10, "L"),
    (0x11F12, 0x11F33, "L"), (0x11F34, 0x11F3A, "M"), (0x11F3E, 0x11F42, "M"), (0x11F43, 0x11F4F, "P"),
    (0x11F50, 0x11F59, "N"), (0x1342F, 0x1342F, "L"), (0x13439, 0x1343F, "C"), (0x13440, 0x13440, "M"),
    (0x13441, 0x13446, "L"), (0x13447, 0x13455, "M"), (0x1B132, 0x1B132, "L"), (0x1B155, 0x1B155, "L"),
    (0x1D2C0, 0x1D2D3, "N"), (0x1DF25, 0x1DF2A, "L"), (0x1E030, 0x1E06D, "L"), (0x1E08F, 0x1E08F, "M"),
    (0x1E4D0, 0x1E4EB, "L"), (0x1E4EC, 0x1E4EF, "M"), (0x1E4F0, 0x1E4F9, "N"), (0x1F6DC, 0x1F6DC, "S"),
    (0x1F774, 0x1F776, "S"), (0x1F77B, 0x1F77F, "S"), (0x1F7D9, 0x1F7D9, "S"), (0x1FA75, 0x1FA77, "S"),
    (0x1FA87, 0x1FA88, "S"), (0x1FAAD, 0x1FAAF, "S"), (0x1FABB, 0x1FABD, "S"), (0x1FABF, 0x1FABF, "S"),
    (0x1FACE, 0x1FACF, "S"), (0x1FADA, 0x1FADB, "S"), (0x1FAE8, 0x1FAE8, "S"), (0x1FAF7, 0x1FAF8, "S"),
    (0x2B739, 0x2B739, "L"), (0x2EBF0, 0x2EE5D, "L"), (0x31350, 0x323AF, "L"),
)
# llama.cpp's \s (unicode_set_whitespace): the Unicode White_Space property.
_WHITESPACE = (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
               0x202F, 0x205F, 0x3000)
_MAX_CODEPOINT = 0x10FFFF


@lru_cache(maxsize=1)
def _category_ranges() -> dict[str, tuple[tuple[int, int], ...]]:
    """Codepoint ranges of the general-category classes L, N, P, S as llama.cpp's Unicode 15.1 tables have them."""
    added = {c: cls for first, last, cls in _UNICODE_15_ADDITIONS for c in range(first, last + 1)}
    ranges: dict[str, list[tuple[int, int]]] = {"L": [], "N": [], "P": [], "S": []}
    category = unicodedata.category
    current, start = "", 0
    for c in range(_MAX_CODEPOINT + 2):
        cat = category(chr(c)) if c <= _MAX_CODEPOINT else "end"
        cls = added.get(c, "Cn") if cat == "Cn" else cat[0]
        if cls != current:
            if current in ranges:
                ranges[current].append((start, c - 1))
            current, start = cls, c
    return {k: tuple(v) for k, v in ranges.items()}


def _class_body(*classes: str) -> str:
    """The inside of a regex character class matching the given category classes ("W" = llama.cpp's \\s)."""
    parts = []
    for cls in classes:
        pairs = [(c, c) for c in _WHITESPACE] if cls == "W" else _category_ranges()[cls]
        parts += [f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in pairs]
    return "".join(parts)


@cache
def _pre_tokenizer_patterns(kind: str) -> tuple[re.Pattern[str], ...]:
    """The regexes llama.cpp applies in turn for a pre-tokenizer kind (llm_tokenizer_bpe, unicode_regex_split)."""
    L, N, P, W = (_class_body(c) for c in "LNPW")
    gpt2 = (rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{W}{L}{N}]+|[{W}]+(?![^{W}])|[{W}]+")
    if kind == PRE_GPT2:
        return (re.compile(gpt2),)
    if kind == PRE_LLAMA3:
        return (re.compile(
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
            rf"|[^\r\n{L}{N}]?[{L}]+|[{N}]{{1,3}}| ?[^{W}{L}{N}]+[\r\n]*|[{W}]*[\r\n]+|[{W}]+(?![^{W}])|[{W}]+"
        ),)
    return (re.compile(rf"[{P}\$\+<=>\^~\|]+"), re.compile(gpt2), re.compile(rf"[{N}]+"), re.compile(r"[0-9]{3}"))


def _split(pattern: re.Pattern[str], text: str) -> list[str]:
    """Cut text into the pattern's matches and the stretches between them (unicode_regex_split_stl)."""
    out, pos = [], 0
    for m in pattern.finditer(text):
        start, end = m.span()
        if start > pos:
            out.append(text[pos:start])
        out.append(text[start:end])
        pos = end
    if pos < len(text):
        out.append(text[pos:])
    return out


def pre_tokenize(text: str, kind: str) -> list[str]:
    """Words of text as llama.cpp's pre-tokenizer `kind` (llama3, gpt-2 or default) cuts them, before byte encoding."""
    words = [text]
    for pattern in _pre_tokenizer_patterns(kind):
        words = [w for word in words for w in _split(pattern, word)]
    return words


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


def _byte_text(b: int) -> str:
    """A one-byte token text as a str (bytes >= 0x80 come back as surrogate escapes)."""
    return bytes([b]).decode("utf-8", "surrogateescape")


def _bpe_piece(text: str) -> bytes:
    """Bytes of a NORMAL byte-level token (llama_decode_text, with its [UNK_BYTE_0x..] marker for foreign chars)."""
    out = bytearray()
    for ch in text:
        b = _BYTE_OF_CHAR.get(ch)
        if b is None:
            out += b"[UNK_BYTE_0x" + ch.encode("utf-8", "surrogateescape").hex().encode() + _utf8(text) + b"]"
        else:
            out.append(b)
    return bytes(out)


def _utf8(text: str) -> bytes:
    """UTF-8 bytes of a token text (surrogate escapes back to their bytes)."""
    return text.encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------------------------------------
# Pair merging shared by BPE (rank: lower first) and SentencePiece (minus score: lower first)

_SHORT_WORD = 48  # symbols; longer words use the heap, as llama.cpp always does


def _merge(symbols: list[str], table: Mapping[str, float], sep: str) -> list[str]:
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
    """`_merge` with llama.cpp's priority queue over a linked list of symbols (stale entries skipped)."""
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
# Metadata reading


def _short(value: object) -> str:
    """A value for an error message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _strings(meta: Mapping[str, object], key: str, required: bool = True) -> list[str] | None:
    """An array-of-strings metadata value."""
    value = meta.get(key)
    if value is None:
        if required:
            raise TokenizerError(f"{key}: missing from the GGUF metadata")
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        raise TokenizerError(f"{key} = {_short(value)}: expected an array of strings")
    return list(value)


def _numbers(meta: Mapping[str, object], key: str, n: int, kinds: str) -> np.ndarray | None:
    """A numeric array metadata value with at least n entries (dtype kinds 'i', 'u', 'f')."""
    value = meta.get(key)
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.dtype.kind not in kinds:
        raise TokenizerError(f"{key} = {_short(value)}: expected a 1-d array of numbers ({kinds})")
    if len(arr) < n:
        raise TokenizerError(f"{key} has {len(arr)} entries for {n} tokens")
    return arr[:n]


def _string(meta: Mapping[str, object], key: str, default: str | None) -> str | None:
    """A string metadata value."""
    value = meta.get(key, default)
    if value is not None and not isinstance(value, str):
        raise TokenizerError(f"{key} = {_short(value)}: expected a string")
    return value


def _flag(meta: Mapping[str, object], key: str, default: bool) -> bool:
    """A bool metadata value."""
    value = meta.get(key)
    if value is None:
        return default
    if not isinstance(value, (bool, np.bool_)):
        raise TokenizerError(f"{key} = {_short(value)}: expected a bool")
    return bool(value)


def _token_id(meta: Mapping[str, object], key: str, default: int | None, n: int) -> int | None:
    """A token-id metadata value in [0, n); a default outside the vocabulary means none (as llama.cpp does)."""
    value = meta.get(key)
    if value is None:
        return default if default is not None and 0 <= default < n else None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= value < n:
        raise TokenizerError(f"{key} = {_short(value)}: expected a token id in [0, {n})")
    return int(value)


def _token_texts(meta: Mapping[str, object]) -> list[str]:
    """tokenizer.ggml.tokens, empty texts renamed [EMPTY_i] and duplicates refused (llama.cpp asserts on them)."""
    texts = _strings(meta, KEY_TOKENS)
    if not texts:
        raise TokenizerError(f"{KEY_TOKENS} is empty")
    texts = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(texts)]
    if len(set(texts)) != len(texts):
        seen: dict[str, int] = {}
        for i, t in enumerate(texts):
            if t in seen:
                raise TokenizerError(f"{KEY_TOKENS}[{i}] = {t!r} repeats token {seen[t]}")
            seen[t] = i
    return texts


def _token_attrs(meta: Mapping[str, object], n: int) -> list[TokenAttr]:
    """Per-token attributes from tokenizer.ggml.token_type (all NORMAL when absent)."""
    types = _numbers(meta, KEY_TOKEN_TYPE, n, "iu")
    if types is None:
        return [TokenAttr.NORMAL] * n
    return [_ATTR_OF_TYPE.get(int(t), TokenAttr.UNDEFINED) for t in types.tolist()]


def _merge_ranks(meta: Mapping[str, object]) -> dict[str, int]:
    """Merge "a b" -> rank (its index; the first of repeated merges wins)."""
    merges = _strings(meta, KEY_MERGES)
    return dict(zip(reversed(merges), range(len(merges) - 1, -1, -1), strict=True))


def _pre_kind(pre: str | None) -> str:
    """The pre-tokenizer kind for a tokenizer.ggml.pre value (missing means llama.cpp's default)."""
    if pre is None or pre == PRE_DEFAULT:
        return PRE_DEFAULT
    if pre in LLAMA3_NAMES:
        return PRE_LLAMA3
    if pre in GPT2_NAMES:
        return PRE_GPT2
    known = (PRE_DEFAULT, *LLAMA3_NAMES, *GPT2_NAMES)
    raise TokenizerError(f"{KEY_TOKENIZER_PRE} = {pre!r}: unsupported pre-tokenizer; expected one of {known}")


# ---------------------------------------------------------------------------------------------------------------------


class Tokenizer:
    """Text <-> token ids exactly as llama.cpp's vocab does, built from a GGUF file's tokenizer.* metadata."""

    def __init__(self, meta: Mapping[str, object]) -> None:
        self.model = _string(meta, KEY_TOKENIZER_MODEL, None)
        if self.model not in (MODEL_BPE, MODEL_SPM):
            raise TokenizerError(f"{KEY_TOKENIZER_MODEL} = {self.model!r}: expected {MODEL_BPE!r} or {MODEL_SPM!r}")
        self.texts = _token_texts(meta)
        n = len(self.texts)
        self._ids = {t: i for i, t in enumerate(self.texts)}
        self._attrs = _token_attrs(meta, n)
        self._read_options(meta)
        self._read_special_ids(meta, n)
        self._find_named_tokens()
        self.eog_ids = self._end_of_generation_ids()
        self._set_strip_attrs(meta)
        self._specials = self._special_tokens()
        self._pieces: list[bytes | None] = [None] * n
        self._cache: dict[str, list[int]] = {}
        if self.model == MODEL_BPE:
            self._ranks = _merge_ranks(meta)
        else:
            self._read_scores(meta, n)

    @classmethod
    def from_gguf(cls, gguf: object) -> Tokenizer:
        """Tokenizer of a GGUFFile (or of any mapping of metadata key -> value)."""
        meta = getattr(gguf, "metadata", gguf)
        if not isinstance(meta, Mapping):
            raise TokenizerError(f"expected a GGUFFile or a metadata mapping, got {type(gguf).__name__}")
        return cls(meta)

    @classmethod
    def from_path(cls, path: str | Path) -> Tokenizer:
        """Tokenizer of the GGUF file at path (reads the header only)."""
        with read_gguf(path) as gguf:
            return cls(gguf.metadata)

    # -- setup ---------------------------------------------------------------------------------------------------

    def _read_options(self, meta: Mapping[str, object]) -> None:
        """Pre-tokenizer and flags with llama.cpp's per-model defaults, then the GGUF keys that override them."""
        spm = self.model == MODEL_SPM
        self.pre = _string(meta, KEY_TOKENIZER_PRE, None)
        self.pre_kind = None if spm else _pre_kind(self.pre)
        self.ignore_merges = self.pre_kind == PRE_LLAMA3
        self.clean_spaces = not spm
        self.add_bos = _flag(meta, KEY_ADD_BOS, spm or self.pre_kind == PRE_LLAMA3)
        self.add_eos = _flag(meta, KEY_ADD_EOS, False)
        self.add_space_prefix = _flag(meta, KEY_ADD_SPACE_PREFIX, spm)

    def _read_special_ids(self, meta: Mapping[str, object], n: int) -> None:
        """BOS/EOS/UNK/EOT/EOM/FIM ids: llama.cpp's defaults (SPM 1/2/0, gpt2 11/11) unless the metadata names them."""
        spm = self.model == MODEL_SPM
        self.bos_id = _token_id(meta, KEY_BOS_ID, 1 if spm else 11, n)
        self.eos_id = _token_id(meta, KEY_EOS_ID, 2 if spm else 11, n)
        self.unk_id = _token_id(meta, KEY_UNK_ID, 0 if spm else None, n)
        self.eot_id = _token_id(meta, KEY_EOT_ID, None, n)
        self.eom_id = _token_id(meta, KEY_EOM_ID, None, n)
        self._fim_pad_id = _token_id(meta, KEY_FIM_PAD_ID, None, n)
        self._fim_rep_id = _token_id(meta, KEY_FIM_REP_ID, None, n)
        self._fim_sep_id = _token_id(meta, KEY_FIM_SEP_ID, None, n)

    def _find_by_text(self, texts: Sequence[str]) -> int | None:
        """The lowest id among tokens spelled as one of texts, made CONTROL (llama.cpp's text-based detection)."""
        found = [self._ids[t] for t in texts if t in self._ids]
        if not found:
            return None
        tid = min(found)
        self._attrs[tid] |= TokenAttr.CONTROL
        return tid

    def _find_named_tokens(self) -> None:
        """EOT, EOM and FIM tokens recognised by their text where the metadata does not name them."""
        if self.eot_id is None:
            self.eot_id = self._find_by_text(_EOT_TEXTS)
        if self.eom_id is None:
            self.eom_id = self._find_by_text(_EOM_TEXTS)
        for texts in (_FIM_PRE_TEXTS, _FIM_SUF_TEXTS, _FIM_MID_TEXTS):
            self._find_by_text(texts)
        if self._fim_pad_id is None:
            self._fim_pad_id = self._find_by_text(_FIM_PAD_TEXTS)
        if self._fim_rep_id is None:
            self._fim_rep_id = self._find_by_text(_FIM_REP_TEXTS)
        if self._fim_sep_id is None:
            self._fim_sep_id = self._find_by_text(_FIM_SEP_TEXTS)

    def _end_of_generation_ids(self) -> frozenset[int]:
        """Tokens that end generation: EOS, EOT, EOM, FIM pad/repo/sep and the end-looking texts llama.cpp lists."""
        eog = {t for t in (self._fim_pad_id, self._fim_rep_id, self._fim_sep_id) if t is not None}
        for text in _EOG_TEXTS & self._ids.keys():
            eog.add(self._ids[text])
            self._attrs[self._ids[text]] |= TokenAttr.CONTROL
        for text in _ALWAYS_RENDERED:
            if text in self._ids:
                self._attrs[self._ids[text]] = TokenAttr.USER_DEFINED
        eog |= {t for t in (self.eos_id, self.eot_id, self.eom_id) if t is not None}
        texts = {self.texts[t] for t in eog}
        if "<|end|>" in texts and {"<|call|>", "<|calls|>"} & texts and {"<|return|>", "<|flush|>"} & texts:
            eog.discard(self._ids["<|end|>"])
            self._attrs[self._ids["<|end|>"]] = TokenAttr.USER_DEFINED
        if "</s>" in texts and {"<|tool_response>", "<|plamo:eos|>"} & texts:
            eog.discard(self._ids["</s>"])
            self._attrs[self._ids["</s>"]] = TokenAttr.NORMAL
        return frozenset(eog)

    def _set_strip_attrs(self, meta: Mapping[str, object]) -> None:
        """LSTRIP/RSTRIP that llama.cpp sets by model name (phi-3 specials, jina/nomic/modern-bert masks)."""
        name = (_string(meta, KEY_NAME, "") or "").lower()
        arch = _string(meta, "general.architecture", "") or ""
        pre = self.pre or ""
        mask = None
        if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or any(
            s in arch for s in ("nomic-bert-moe", "jina-bert-v3")
        ):
            mask = "<mask>"
        elif "phi-3" in name or "phi3" in name:
            for tid, attr in enumerate(self._attrs):
                if attr & _SPECIAL or self.texts[tid] == "</s>":
                    self._attrs[tid] |= TokenAttr.RSTRIP
            for text in ("<unk>", "<s>", "<|endoftext|>"):
                if text in self._ids:
                    self._attrs[self._ids[text]] &= ~TokenAttr.RSTRIP
        elif "modern-bert" in name:
            mask = "[MASK]"
        if mask is not None and mask in self._ids:
            self._attrs[self._ids[mask]] |= TokenAttr.LSTRIP

    def _special_tokens(self) -> list[tuple[int, str]]:
        """(id, text) of the tokens cut out of the text before tokenizing, longest text (in bytes) first."""
        ids = [i for i, a in enumerate(self._attrs) if a & _SPECIAL]
        ids.sort(key=lambda i: -len(_utf8(self.texts[i])))
        return [(i, self.texts[i]) for i in ids]

    def _read_scores(self, meta: Mapping[str, object], n: int) -> None:
        """SentencePiece scores (0 when absent), byte-fallback ids, and whether words can be merged one by one."""
        scores = _numbers(meta, KEY_SCORES, n, "iuf")
        values = np.zeros(n, np.float32) if scores is None else scores.astype(np.float32)
        self._neg_scores = {t: -float(s) for t, s in zip(self.texts, values.tolist(), strict=True)}
        self._byte_ids = [self._ids.get(f"<0x{b:02X}>", self._ids.get(_byte_text(b))) for b in range(256)]
        # A merge can only cross a "x▁" boundary if some token spells a non-space followed by a space mark.
        self._spm_by_word = not any(re.search(f"[^{SPACE_MARK}]{SPACE_MARK}", t) for t in self.texts)

    # -- properties --------------------------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        """Number of tokens."""
        return len(self.texts)

    def attr(self, token_id: int) -> TokenAttr:
        """llama.cpp's attributes of a token."""
        self._check_id(token_id)
        return self._attrs[token_id]

    def is_eog(self, token_id: int) -> bool:
        """Whether the token ends generation (EOS, EOT, ...)."""
        return token_id in self.eog_ids

    def token_id(self, text: str) -> int | None:
        """The id of the token spelled exactly text, or None."""
        return self._ids.get(text)

    def describe(self) -> dict[str, object]:
        """The tokenizer's settings, for records."""
        return {
            "model": self.model, "pre": self.pre, "pre_kind": self.pre_kind, "n_vocab": self.n_vocab,
            "bos_id": self.bos_id, "eos_id": self.eos_id, "add_bos": self.add_bos, "add_eos": self.add_eos,
            "add_space_prefix": self.add_space_prefix, "eog_ids": sorted(self.eog_ids),
        }

    # -- encode ------------------------------------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of text; add_bos adds what the model asks for (BOS, and EOS if add_eos), like llama_tokenize."""
        if not isinstance(text, str):
            raise TokenizerError(f"text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TokenizerError(f"text is not valid unicode: {e.reason} at index {e.start}") from None
        out: list[int] = []
        if add_bos and self.add_bos:
            out.append(self._required(self.bos_id, KEY_BOS_ID))
        fragments = self._partition(text, parse_special) if text else []
        if self.model == MODEL_SPM:
            self._encode_spm(fragments, out)
        else:
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    self._encode_bpe(frag, out)
        if add_bos and self.add_eos:
            out.append(self._required(self.eos_id, KEY_EOS_ID))
        return out

    @staticmethod
    def _required(token_id: int | None, key: str) -> int:
        """A special id the model's flags need."""
        if token_id is None:
            raise TokenizerError(f"{key}: the tokenizer adds this token but the vocabulary has none")
        return token_id

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Text cut at special tokens, longest first (tokenizer_st_partition); str pieces are left to tokenize."""
        frags: list[str | int] = [text]
        for tid, special in self._specials:
            attr = self._attrs[tid]
            if not parse_special and attr & _HIDDEN:
                continue
            if not any(isinstance(f, str) and special in f for f in frags):
                continue
            out: list[str | int] = []
            for f in frags:
                if isinstance(f, int) or special not in f:
                    out.append(f)
                    continue
                self._cut(f.split(special), tid, attr, out)
            frags = out
        return frags

    @staticmethod
    def _cut(parts: list[str], tid: int, attr: TokenAttr, out: list[str | int]) -> None:
        """Append parts joined by the special token, stripping spaces beside it as LSTRIP/RSTRIP say."""
        for i, part in enumerate(parts):
            if i > 0:
                out.append(tid)
                if attr & TokenAttr.RSTRIP:
                    part = part.lstrip(C_SPACES)
            if i < len(parts) - 1 and attr & TokenAttr.LSTRIP:
                part = part.rstrip(C_SPACES)
            if part:
                out.append(part)

    def _encode_bpe(self, text: str, out: list[int]) -> None:
        """Byte-level BPE of a text fragment, word by word (llm_tokenizer_bpe_session)."""
        cache = self._cache
        for word in pre_tokenize(text, self.pre_kind):
            ids = cache.get(word)
            if ids is None:
                ids = self._bpe_word(word)
                if len(cache) > 100_000:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)

    def _bpe_word(self, word: str) -> list[int]:
        """Token ids of one pre-tokenized word."""
        spelled = encode_bytes(word)
        if self.ignore_merges and spelled in self._ids:
            return [self._ids[spelled]]
        ids = []
        for sym in _merge(list(spelled), self._ranks, " "):
            tid = self._ids.get(sym)
            if tid is not None:
                ids.append(tid)
                continue
            for b in _utf8(sym):
                tid = self._ids.get(_byte_text(b))
                if tid is not None:
                    ids.append(tid)
        return ids

    def _encode_spm(self, fragments: list[str | int], out: list[int]) -> None:
        """SentencePiece over fragments: a space before text that starts the input or follows a special token."""
        prev_special = True
        for frag in fragments:
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            text = (" " + frag) if self.add_space_prefix and prev_special else frag
            self._spm_text(text.replace(" ", SPACE_MARK), out)
            prev_special = False

    def _spm_text(self, text: str, out: list[int]) -> None:
        """SentencePiece merges of an escaped text, word by word where no token can span two words."""
        words = _SPM_WORD.findall(text) if self._spm_by_word else [text]
        cache = self._cache
        for word in words:
            ids = cache.get(word)
            if ids is None:
                ids = self._spm_word(word)
                if len(cache) > 100_000:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)

    def _spm_word(self, text: str) -> list[int]:
        """Token ids of an escaped text: highest-score merges, then byte fallback for what is not a token."""
        ids = []
        for sym in _merge(list(text), self._neg_scores, ""):
            tid = self._ids.get(sym)
            if tid is not None:
                ids.append(tid)
                continue
            for b in _utf8(sym):
                tid = self._byte_ids[b]
                if tid is None:
                    raise TokenizerError(f"byte 0x{b:02X} of {sym!r} has no token (<0x{b:02X}> or the byte itself)")
                ids.append(tid)
        return ids

    # -- decode ------------------------------------------------------------------------------------------------------

    def _check_id(self, token_id: int) -> None:
        """Raise TokenRangeError unless 0 <= token_id < n_vocab."""
        if not 0 <= token_id < len(self.texts):
            raise TokenRangeError(f"token id {token_id} is outside the vocabulary [0, {len(self.texts)})")

    def piece(self, token_id: int, special: bool = False) -> bytes:
        """Bytes of one token (llama_token_to_piece); CONTROL/UNKNOWN tokens are empty unless special."""
        self._check_id(token_id)
        if not special and self._attrs[token_id] & _HIDDEN:
            return b""
        piece = self._pieces[token_id]
        if piece is None:
            piece = self._pieces[token_id] = self._make_piece(token_id)
        return piece

    def _make_piece(self, token_id: int) -> bytes:
        """Bytes of a token as llama.cpp's piece cache holds them (special=True)."""
        text, attr = self.texts[token_id], self._attrs[token_id]
        if attr & (_HIDDEN | TokenAttr.USER_DEFINED):
            return _utf8(text)
        if attr & TokenAttr.NORMAL:
            return _utf8(text.replace(SPACE_MARK, " ")) if self.model == MODEL_SPM else _bpe_piece(text)
        if attr & TokenAttr.BYTE:
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                raise TokenizerError(f"{KEY_TOKENS}[{token_id}] = {text!r} is a BYTE token but not <0xXX>") from None
        return b""

    def decode_bytes(self, ids: Iterable[int], special: bool = False, remove_special: bool = False) -> bytes:
        """Bytes of a token sequence exactly as llama_detokenize(remove_special, unparse_special=special) gives."""
        ids = [int(t) for t in ids]
        remove_space = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        out = bytearray()
        for i, tid in enumerate(ids):
            piece = self.piece(tid, special)
            if i == 0 and remove_space and piece[:1] == b" ":
                piece = piece[1:]
            out += piece
        return _clean_spaces(out) if self.clean_spaces else bytes(out)

    def decode(self, ids: Iterable[int], special: bool = False, remove_special: bool = False) -> str:
        """Text of a token sequence (decode_bytes, then UTF-8 with errors='replace')."""
        return self.decode_bytes(ids, special, remove_special).decode("utf-8", errors="replace")


def _clean_spaces(buf: bytearray) -> bytes:
    """llama.cpp's clean_up_tokenization_spaces, pass for pass on the bytes (" ?" -> "?", " ' " -> "'", " 's")."""
    t = buf
    n = len(t)
    total = 1 if n else 0
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x in b"?!.,":
            total -= 1
        t[total] = x
        total += 1
    n, total, i = total, 1 if total else 0, 1
    while i < n:
        x = t[i]
        if x == 0x27 and i + 1 < n and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            total -= 1
            i += 1
            t[i] = 0
        t[total] = x
        total += 1
        i += 1
    n, total = total, 1 if total else 0
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = t[i + 1]
            if x1 in b"sm" or (x1 not in b"td" and i + 2 < n and bytes(t[i + 1 : i + 3]) in (b"re", b"ve")):
                total -= 1
        t[total] = x
        total += 1
    return bytes(t[:total])
