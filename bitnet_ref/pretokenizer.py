"""llama.cpp's BPE pre-tokenizers (unicode.cpp, llm_tokenizer_bpe): the regexes that cut text into words before
byte-level BPE, for the kinds `tokenizer.ggml.pre` can name here (llama3, gpt-2, default).

Character classes follow llama.cpp's own Unicode tables (Unicode 15.1): Python's unicodedata plus the characters that
Unicode 15.0 and 15.1 added (Python 3.11 ships Unicode 14.0). A Python whose unicodedata is newer than 15.1 would
class the characters added after 15.1, which llama.cpp treats as unassigned.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache, lru_cache

from bitnet_ref.constants import KEY_TOKENIZER_PRE
from bitnet_ref.errors import TokenizerError

PRE_DEFAULT = "default"
PRE_GPT2 = "gpt-2"
PRE_LLAMA3 = "llama3"
# llama.cpp's names for the pre-tokenizers this module implements (llama_vocab::impl::load).
LLAMA3_NAMES = (
    "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano",
)
GPT2_NAMES = ("gpt-2",)

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


# ---------------------------------------------------------------------------------------------------------------------
# Pre-tokenizers


def pre_tokenizer_kind(pre: str | None) -> str:
    """The pre-tokenizer kind for a tokenizer.ggml.pre value (missing means llama.cpp's default)."""
    if pre is None or pre == PRE_DEFAULT:
        return PRE_DEFAULT
    if pre in LLAMA3_NAMES:
        return PRE_LLAMA3
    if pre in GPT2_NAMES:
        return PRE_GPT2
    known = (PRE_DEFAULT, *LLAMA3_NAMES, *GPT2_NAMES)
    raise TokenizerError(f"{KEY_TOKENIZER_PRE} = {pre!r}: unsupported pre-tokenizer; expected one of {known}")


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
