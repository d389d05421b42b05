"""Tokenizer built from GGUF metadata that gives llama.cpp's token ids and text (llama-vocab.cpp, unicode.cpp).

Two models, as `tokenizer.ggml.model` names them:
- `gpt2`: byte-level BPE (bitnet_ref.bpe), its words cut by the pre-tokenizer `tokenizer.ggml.pre` names
  (bitnet_ref.pretokenizer).
- `llama`: SentencePiece BPE (bitnet_ref.spm).
Special tokens (CONTROL, USER_DEFINED, UNKNOWN) are cut out of the text first, longest first
(bitnet_ref.special_tokens). Decoding works on bytes and turns them into a str (errors="replace") only at the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from bitnet_ref.bpe import BPE, utf8
from bitnet_ref.checkpoint import read_model_file
from bitnet_ref.constants import (
    KEY_ADD_BOS,
    KEY_ADD_EOS,
    KEY_ADD_SPACE_PREFIX,
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
)
from bitnet_ref.errors import TokenizerError, TokenRangeError
from bitnet_ref.pretokenizer import PRE_LLAMA3, pre_tokenizer_kind
from bitnet_ref.special_tokens import (
    ATTR_OF_TYPE,
    HIDDEN,
    FimIds,
    TokenAttr,
    end_of_generation_ids,
    find_named_tokens,
    partition,
    set_strip_attrs,
    specials_longest_first,
)
from bitnet_ref.spm import SentencePiece

KEY_EOT_ID = "tokenizer.ggml.eot_token_id"
KEY_EOM_ID = "tokenizer.ggml.eom_token_id"
KEY_FIM_PAD_ID = "tokenizer.ggml.fim_pad_token_id"
KEY_FIM_REP_ID = "tokenizer.ggml.fim_rep_token_id"
KEY_FIM_SEP_ID = "tokenizer.ggml.fim_sep_token_id"

MODEL_BPE = "gpt2"
MODEL_SPM = "llama"

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
    return [ATTR_OF_TYPE.get(int(t), TokenAttr.UNDEFINED) for t in types.tolist()]


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
        fim_ids = self._read_special_ids(meta, n)
        self.eot_id, self.eom_id, fim_ids = find_named_tokens(self._ids, self._attrs, self.eot_id, self.eom_id, fim_ids)
        self.eog_ids = end_of_generation_ids(self.texts, self._ids, self._attrs,
                                             (self.eos_id, self.eot_id, self.eom_id), fim_ids)
        name = (_string(meta, KEY_NAME, "") or "").lower()
        arch = _string(meta, "general.architecture", "") or ""
        set_strip_attrs(self.texts, self._ids, self._attrs, name, arch, self.pre or "")
        self._specials = specials_longest_first(self.texts, self._attrs)
        self._pieces: list[bytes | None] = [None] * n
        self._encoder: BPE | SentencePiece
        if self.model == MODEL_BPE:
            self._encoder = BPE(self._ids, _strings(meta, KEY_MERGES), self.pre_kind, self.ignore_merges)
        else:
            self._encoder = SentencePiece(self.texts, self._ids, _numbers(meta, KEY_SCORES, n, "iuf"),
                                          self.add_space_prefix)

    @classmethod
    def from_gguf(cls, gguf: object) -> Tokenizer:
        """Tokenizer of a GGUFFile (or of any mapping of metadata key -> value)."""
        meta = getattr(gguf, "metadata", gguf)
        if not isinstance(meta, Mapping):
            raise TokenizerError(f"expected a GGUFFile or a metadata mapping, got {type(gguf).__name__}")
        return cls(meta)

    @classmethod
    def from_path(cls, path: str | Path) -> Tokenizer:
        """Tokenizer of the GGUF file (header only) or HF checkpoint folder (its tokenizer.json) at path."""
        with read_model_file(path) as gguf:
            return cls(gguf.metadata)

    # -- setup ---------------------------------------------------------------------------------------------------

    def _read_options(self, meta: Mapping[str, object]) -> None:
        """Pre-tokenizer and flags with llama.cpp's per-model defaults, then the GGUF keys that override them."""
        spm = self.model == MODEL_SPM
        self.pre = _string(meta, KEY_TOKENIZER_PRE, None)
        self.pre_kind = None if spm else pre_tokenizer_kind(self.pre)
        self.ignore_merges = self.pre_kind == PRE_LLAMA3
        self.clean_spaces = not spm
        self.add_bos = _flag(meta, KEY_ADD_BOS, spm or self.pre_kind == PRE_LLAMA3)
        self.add_eos = _flag(meta, KEY_ADD_EOS, False)
        self.add_space_prefix = _flag(meta, KEY_ADD_SPACE_PREFIX, spm)

    def _read_special_ids(self, meta: Mapping[str, object], n: int) -> FimIds:
        """BOS/EOS/UNK/EOT/EOM ids: llama.cpp's defaults (SPM 1/2/0, gpt2 11/11) unless the metadata names them; returns
        the FIM pad/repo/sep ids the metadata names."""
        spm = self.model == MODEL_SPM
        self.bos_id = _token_id(meta, KEY_BOS_ID, 1 if spm else 11, n)
        self.eos_id = _token_id(meta, KEY_EOS_ID, 2 if spm else 11, n)
        self.unk_id = _token_id(meta, KEY_UNK_ID, 0 if spm else None, n)
        self.eot_id = _token_id(meta, KEY_EOT_ID, None, n)
        self.eom_id = _token_id(meta, KEY_EOM_ID, None, n)
        pad = _token_id(meta, KEY_FIM_PAD_ID, None, n)
        rep = _token_id(meta, KEY_FIM_REP_ID, None, n)
        sep = _token_id(meta, KEY_FIM_SEP_ID, None, n)
        return pad, rep, sep

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
        fragments = partition(text, self._specials, self._attrs, parse_special) if text else []
        self._encoder.encode(fragments, out)
        if add_bos and self.add_eos:
            out.append(self._required(self.eos_id, KEY_EOS_ID))
        return out

    @staticmethod
    def _required(token_id: int | None, key: str) -> int:
        """A special id the model's flags need."""
        if token_id is None:
            raise TokenizerError(f"{key}: the tokenizer adds this token but the vocabulary has none")
        return token_id

    # -- decode ------------------------------------------------------------------------------------------------------

    def _check_id(self, token_id: int) -> None:
        """Raise TokenRangeError unless 0 <= token_id < n_vocab."""
        if not 0 <= token_id < len(self.texts):
            raise TokenRangeError(f"token id {token_id} is outside the vocabulary [0, {len(self.texts)})")

    def piece(self, token_id: int, special: bool = False) -> bytes:
        """Bytes of one token (llama_token_to_piece); CONTROL/UNKNOWN tokens are empty unless special."""
        self._check_id(token_id)
        if not special and self._attrs[token_id] & HIDDEN:
            return b""
        piece = self._pieces[token_id]
        if piece is None:
            piece = self._pieces[token_id] = self._make_piece(token_id)
        return piece

    def _make_piece(self, token_id: int) -> bytes:
        """Bytes of a token as llama.cpp's piece cache holds them (special=True)."""
        text, attr = self.texts[token_id], self._attrs[token_id]
        if attr & (HIDDEN | TokenAttr.USER_DEFINED):
            return utf8(text)
        if attr & TokenAttr.NORMAL:
            return self._encoder.piece(text)
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
