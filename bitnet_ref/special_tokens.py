"""Token attributes and special tokens as llama.cpp's vocab sets them up (llama_vocab::impl::load) and cuts them out of
the text before the tokenizer model runs (tokenizer_st_partition).

Special tokens (CONTROL, USER_DEFINED, UNKNOWN) are cut out of the text first, longest first. Tokens llama.cpp knows by
their text (EOT, EOM, FIM, end-of-generation) become CONTROL; some models' tokens strip the spaces beside them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import IntFlag

from bitnet_ref.bpe import utf8
from bitnet_ref.constants import TokenType

C_SPACES = " \t\n\v\f\r"  # C isspace() in the "C" locale


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


ATTR_OF_TYPE = {
    TokenType.NORMAL: TokenAttr.NORMAL,
    TokenType.UNKNOWN: TokenAttr.UNKNOWN,
    TokenType.CONTROL: TokenAttr.CONTROL,
    TokenType.USER_DEFINED: TokenAttr.USER_DEFINED,
    TokenType.UNUSED: TokenAttr.UNUSED,
    TokenType.BYTE: TokenAttr.BYTE,
}
_SPECIAL = TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN  # cut out of the text before the model runs
HIDDEN = TokenAttr.CONTROL | TokenAttr.UNKNOWN  # rendered only when special=True

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

FimIds = tuple[int | None, int | None, int | None]  # FIM pad, repo, sep

# ---------------------------------------------------------------------------------------------------------------------
# Setup (llama_vocab::impl::load) over the vocabulary's texts, ids (text -> id) and attrs (one per id, set in place)


def _find_by_text(ids: Mapping[str, int], attrs: list[TokenAttr], texts: Sequence[str]) -> int | None:
    """The lowest id among tokens spelled as one of texts, made CONTROL (llama.cpp's text-based detection)."""
    found = [ids[t] for t in texts if t in ids]
    if not found:
        return None
    tid = min(found)
    attrs[tid] |= TokenAttr.CONTROL
    return tid


def find_named_tokens(ids: Mapping[str, int], attrs: list[TokenAttr], eot_id: int | None, eom_id: int | None,
                      fim_ids: FimIds) -> tuple[int | None, int | None, FimIds]:
    """EOT, EOM and FIM pad/repo/sep ids, each recognised by its text where the metadata does not name it (None)."""
    if eot_id is None:
        eot_id = _find_by_text(ids, attrs, _EOT_TEXTS)
    if eom_id is None:
        eom_id = _find_by_text(ids, attrs, _EOM_TEXTS)
    for texts in (_FIM_PRE_TEXTS, _FIM_SUF_TEXTS, _FIM_MID_TEXTS):
        _find_by_text(ids, attrs, texts)
    pad, rep, sep = fim_ids
    if pad is None:
        pad = _find_by_text(ids, attrs, _FIM_PAD_TEXTS)
    if rep is None:
        rep = _find_by_text(ids, attrs, _FIM_REP_TEXTS)
    if sep is None:
        sep = _find_by_text(ids, attrs, _FIM_SEP_TEXTS)
    return eot_id, eom_id, (pad, rep, sep)


def end_of_generation_ids(texts: Sequence[str], ids: Mapping[str, int], attrs: list[TokenAttr],
                          end_ids: Iterable[int | None], fim_ids: FimIds) -> frozenset[int]:
    """Tokens that end generation: end_ids (EOS, EOT, EOM), FIM pad/repo/sep and the end-looking texts llama.cpp
    lists."""
    eog = {t for t in fim_ids if t is not None}
    for text in _EOG_TEXTS & ids.keys():
        eog.add(ids[text])
        attrs[ids[text]] |= TokenAttr.CONTROL
    for text in _ALWAYS_RENDERED:
        if text in ids:
            attrs[ids[text]] = TokenAttr.USER_DEFINED
    eog |= {t for t in end_ids if t is not None}
    eog_texts = {texts[t] for t in eog}
    if "<|end|>" in eog_texts and {"<|call|>", "<|calls|>"} & eog_texts and {"<|return|>", "<|flush|>"} & eog_texts:
        eog.discard(ids["<|end|>"])
        attrs[ids["<|end|>"]] = TokenAttr.USER_DEFINED
    if "</s>" in eog_texts and {"<|tool_response>", "<|plamo:eos|>"} & eog_texts:
        eog.discard(ids["</s>"])
        attrs[ids["</s>"]] = TokenAttr.NORMAL
    return frozenset(eog)


def set_strip_attrs(texts: Sequence[str], ids: Mapping[str, int], attrs: list[TokenAttr], name: str, arch: str,
                    pre: str) -> None:
    """LSTRIP/RSTRIP that llama.cpp sets by model name (phi-3 specials, jina/nomic/modern-bert masks)."""
    mask = None
    if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or any(
        s in arch for s in ("nomic-bert-moe", "jina-bert-v3")
    ):
        mask = "<mask>"
    elif "phi-3" in name or "phi3" in name:
        for tid, attr in enumerate(attrs):
            if attr & _SPECIAL or texts[tid] == "</s>":
                attrs[tid] |= TokenAttr.RSTRIP
        for text in ("<unk>", "<s>", "<|endoftext|>"):
            if text in ids:
                attrs[ids[text]] &= ~TokenAttr.RSTRIP
    elif "modern-bert" in name:
        mask = "[MASK]"
    if mask is not None and mask in ids:
        attrs[ids[mask]] |= TokenAttr.LSTRIP


def specials_longest_first(texts: Sequence[str], attrs: Sequence[TokenAttr]) -> list[tuple[int, str]]:
    """(id, text) of the tokens cut out of the text before tokenizing, longest text (in bytes) first."""
    found = [i for i, a in enumerate(attrs) if a & _SPECIAL]
    found.sort(key=lambda i: -len(utf8(texts[i])))
    return [(i, texts[i]) for i in found]


# ---------------------------------------------------------------------------------------------------------------------
# Parsing


def partition(text: str, specials: Sequence[tuple[int, str]], attrs: Sequence[TokenAttr],
              parse_special: bool) -> list[str | int]:
    """Text cut at special tokens, longest first (tokenizer_st_partition); str pieces are left to tokenize."""
    frags: list[str | int] = [text]
    for tid, special in specials:
        attr = attrs[tid]
        if not parse_special and attr & HIDDEN:
            continue
        if not any(isinstance(f, str) and special in f for f in frags):
            continue
        out: list[str | int] = []
        for f in frags:
            if isinstance(f, int) or special not in f:
                out.append(f)
                continue
            _cut(f.split(special), tid, attr, out)
        frags = out
    return frags


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
