"""The vocabulary of a Hugging Face checkpoint's tokenizer.model or tokenizer.json, as the GGUF `tokenizer.*` metadata
bitnet_ref's Tokenizer reads (docs/FORMATS.md §10).

tokenizer.model (sentencepiece's ModelProto, read first when present, as llama.cpp's converter reads it for BitNet):
its BPE pieces with their scores and types, the trainer's unk/bos/eos ids, the normalizer's add_dummy_prefix; GGUF
tokenizer model `llama`. A unigram model is refused.

Supported: byte-level BPE (`model.type` BPE with a ByteLevel pre-tokenizer), the kind Llama 3 and BitNet b1.58 2B-4T
ship, as GGUF tokenizer model `gpt2`. The pre-tokenizer is recognised by its regex: Llama 3's split pattern is
llama.cpp's `llama-bpe`, a plain ByteLevel with its own regex is `gpt-2`; any other is a one-line error, never a
guess. Token types: added special tokens are CONTROL, other added tokens USER_DEFINED, the rest NORMAL; rows of the
embedding beyond the tokenizer's ids get `[PAD<i>]` tokens of type UNUSED, as llama.cpp's converter writes them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from bitnet_ref.constants import (
    KEY_ADD_BOS,
    KEY_ADD_SPACE_PREFIX,
    KEY_BOS_ID,
    KEY_EOS_ID,
    KEY_MERGES,
    KEY_SCORES,
    KEY_TOKEN_TYPE,
    KEY_TOKENIZER_MODEL,
    KEY_TOKENIZER_PRE,
    KEY_TOKENS,
    KEY_UNK_ID,
    TokenType,
)
from bitnet_ref.errors import CheckpointError
from bitnet_ref.files import check_readable, read_json_object

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_MODEL = "tokenizer.model"
SPM_BPE = 2  # TrainerSpec.model_type
SPM_TYPES = {1: TokenType.NORMAL, 2: TokenType.UNKNOWN, 3: TokenType.CONTROL, 4: TokenType.USER_DEFINED,
             5: TokenType.UNUSED, 6: TokenType.BYTE}  # SentencePiece.Type -> GGUF token type (the same numbers)
WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_OF_SPLIT = {LLAMA3_SPLIT: "llama-bpe"}


def read_tokenizer_json(path: Path, n_vocab: int, bos_id: int | None, eos_id: int | None) -> dict[str, object]:
    """GGUF tokenizer metadata of a tokenizer.json for an embedding of n_vocab rows."""
    tj = read_json_object(path)
    model = tj.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        kind = model.get("type") if isinstance(model, dict) else model
        raise CheckpointError(path, "model.type", kind, "BPE with a vocab object (byte-level BPE)")
    tokens, types = _tokens(path, model["vocab"], tj.get("added_tokens") or [], n_vocab)
    meta: dict[str, object] = {
        KEY_TOKENIZER_MODEL: "gpt2",
        KEY_TOKENIZER_PRE: _pre(path, tj.get("pre_tokenizer")),
        KEY_TOKENS: tokens,
        KEY_TOKEN_TYPE: types,
        KEY_MERGES: _merges(path, model.get("merges") or []),
        KEY_ADD_BOS: _adds_bos(tj.get("post_processor"), tokens, bos_id),
    }
    for key, value in ((KEY_BOS_ID, bos_id), (KEY_EOS_ID, eos_id)):
        if value is not None:
            meta[key] = value
    return meta


def _tokens(path: Path, vocab: dict, added: list, n_vocab: int) -> tuple[list[str], list[int]]:
    """Token texts by id and their GGUF token types, padded to n_vocab."""
    by_id: dict[int, tuple[str, int]] = {}
    for text, i in vocab.items():
        by_id[i] = (text, int(TokenType.NORMAL))
    for tok in added:
        kind = TokenType.CONTROL if tok.get("special") else TokenType.USER_DEFINED
        by_id[tok["id"]] = (tok["content"], int(kind))
    top = max(by_id, default=-1)
    if top >= n_vocab or min(by_id, default=0) < 0:
        raise CheckpointError(path, "token ids", f"{min(by_id)}..{top}", f"ids in [0, {n_vocab}) (the embedding rows)")
    tokens, types = [], []
    for i in range(n_vocab):
        text, kind = by_id.get(i, (f"[PAD{i}]", int(TokenType.UNUSED)))
        tokens.append(text)
        types.append(kind)
    return tokens, types


def _merges(path: Path, merges: list) -> list[str]:
    """Merges as GGUF's "left right" strings (tokenizer.json has them as strings or as pairs)."""
    out = []
    for m in merges:
        if isinstance(m, list) and len(m) == 2:
            out.append(f"{m[0]} {m[1]}")
        elif isinstance(m, str):
            out.append(m)
        else:
            raise CheckpointError(path, "model.merges", m, "\"left right\" strings or [left, right] pairs")
    return out


def _pre(path: Path, pre: object) -> str:
    """llama.cpp's pre-tokenizer name for a tokenizer.json pre_tokenizer."""
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else None
    if (isinstance(steps, list) and len(steps) == 2 and steps[0].get("type") == "Split"
            and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True)):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern in PRE_OF_SPLIT:
            return PRE_OF_SPLIT[pattern]
        raise CheckpointError(path, "pre_tokenizer Split regex", pattern, "Llama 3's split pattern")
    raise CheckpointError(path, "pre_tokenizer", json.dumps(pre)[:120],
                          "ByteLevel, or Split(Llama 3 pattern) then ByteLevel(use_regex=false)")


def _adds_bos(post: object, tokens: list[str], bos_id: int | None) -> bool:
    """Whether the post-processor puts the BOS token before a single sequence (Llama 3's TemplateProcessing)."""
    steps = [post] if isinstance(post, dict) and post.get("type") != "Sequence" else (post or {}).get("processors", [])
    for step in steps:
        single = step.get("single") if step.get("type") == "TemplateProcessing" else None
        if single:
            first = single[0].get("SpecialToken", {}).get("id")
            return bos_id is not None and first == tokens[bos_id]
    return False


# -- tokenizer.model -------------------------------------------------------------------------------------------------


def read_tokenizer_model(path: Path, n_vocab: int) -> dict[str, object]:
    """GGUF tokenizer metadata of a sentencepiece tokenizer.model for an embedding of n_vocab rows."""
    size = check_readable(path)
    data = path.read_bytes()
    pieces, trainer, normalizer = [], {}, {}
    for field_no, value in _fields(path, data, 0, size):
        if field_no == 1:
            pieces.append(_piece(path, data, value))
        elif field_no == 2:
            trainer = {f: v for f, v in _fields(path, data, *value) if isinstance(v, int)}
        elif field_no == 3:
            normalizer = {f: v for f, v in _fields(path, data, *value) if isinstance(v, int)}
    if trainer.get(3, 1) != SPM_BPE:
        raise CheckpointError(path, "trainer_spec.model_type", trainer.get(3, 1), f"{SPM_BPE} (BPE)")
    if not 0 < len(pieces) <= n_vocab:
        raise CheckpointError(path, "pieces", len(pieces), f"1 to {n_vocab} (the embedding rows)")
    pad = n_vocab - len(pieces)
    meta: dict[str, object] = {
        KEY_TOKENIZER_MODEL: "llama",
        KEY_TOKENIZER_PRE: "default",
        KEY_TOKENS: [p[0] for p in pieces] + [f"[PAD{i}]" for i in range(len(pieces), n_vocab)],
        KEY_SCORES: [p[1] for p in pieces] + [-1000.0] * pad,
        KEY_TOKEN_TYPE: [int(p[2]) for p in pieces] + [int(TokenType.UNUSED)] * pad,
        KEY_ADD_SPACE_PREFIX: bool(normalizer.get(3, 1)),
        KEY_ADD_BOS: True,
    }
    for key, field_no, default in ((KEY_UNK_ID, 40, 0), (KEY_BOS_ID, 41, 1), (KEY_EOS_ID, 42, 2)):
        value = _signed32(trainer.get(field_no, default))
        if 0 <= value < n_vocab:
            meta[key] = value
    return meta


def _piece(path: Path, data: bytes, span: tuple[int, int]) -> tuple[str, float, TokenType]:
    """(text, score, type) of one SentencePiece message."""
    text, score, kind = None, 0.0, 1
    for field_no, value in _fields(path, data, *span):
        if field_no == 1 and isinstance(value, tuple):
            try:
                text = data[value[0] : value[1]].decode("utf-8")
            except UnicodeDecodeError:
                raise CheckpointError(path, "piece", data[value[0] : value[1]][:20], "UTF-8 text") from None
        elif field_no == 2 and isinstance(value, float):
            score = value
        elif field_no == 3 and isinstance(value, int):
            kind = value
    if text is None or kind not in SPM_TYPES:
        raise CheckpointError(path, "piece", (text, kind), "a piece with text and a known type")
    return text, score, SPM_TYPES[kind]


def _fields(path: Path, data: bytes, start: int, end: int):
    """(field number, value) of the protobuf message in data[start:end]: ints for varints, floats for fixed32, a
    (start, end) span for length-delimited fields; fixed64 fields are skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(path, data, pos, end)
        field_no, wire = key >> 3, key & 7
        if wire == WIRE_VARINT:
            value, pos = _varint(path, data, pos, end)
        elif wire == WIRE_I32 and pos + 4 <= end:
            value, pos = struct.unpack_from("<f", data, pos)[0], pos + 4
        elif wire == WIRE_I64 and pos + 8 <= end:
            value, pos = None, pos + 8
        elif wire == WIRE_LEN:
            n, pos = _varint(path, data, pos, end)
            if pos + n > end:
                raise CheckpointError(path, f"field {field_no} at byte {pos}", f"{n} bytes", f"at most {end - pos}")
            value, pos = (pos, pos + n), pos + n
        else:
            raise CheckpointError(path, f"field {field_no} at byte {pos}", f"wire type {wire}", "a protobuf message")
        yield field_no, value


def _varint(path: Path, data: bytes, pos: int, end: int) -> tuple[int, int]:
    """A protobuf varint at pos and the position after it."""
    value = shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise CheckpointError(path, f"varint at byte {pos}", "truncated", "a complete protobuf varint")


def _signed32(value: int) -> int:
    """An int32 field's value (negative numbers are 10-byte varints)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value

