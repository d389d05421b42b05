"""Tokenizer: token ids and text equal llama.cpp's (vocab-only load through llama-cpp-python) on a varied corpus, for
both fixture vocabularies, their pre-tokenizer/flag variants and the synthetic vocabulary; plus errors and twins."""

from __future__ import annotations

import ctypes
import random
import time
from pathlib import Path

import llama_cpp
import pytest

from bitnet_ref.bpe import BYTE_CHARS, _merge_heap, merge_pairs
from bitnet_ref.constants import ValueType
from bitnet_ref.errors import TokenizerError, TokenRangeError
from bitnet_ref.gguf_reader import read_gguf
from bitnet_ref.gguf_writer import GGUFWriter
from bitnet_ref.pretokenizer import _UNICODE_15_ADDITIONS, pre_tokenize
from bitnet_ref.special_tokens import TokenAttr
from bitnet_ref.tokenizer import Tokenizer

VOCAB_DIR = Path(__file__).resolve().parent / "fixtures" / "vocab"
BPE_GGUF = VOCAB_DIR / "ggml-vocab-llama-bpe.gguf"
SPM_GGUF = VOCAB_DIR / "ggml-vocab-llama-spm.gguf"
BASE_FILES = (BPE_GGUF, SPM_GGUF)

CORPUS = [
    "",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n\n",
    " \n \n",
    "\t\t\tindented\twith\ttabs",
    "\r\n windows \r\n\r\n line\rends",
    "Hello world",
    "hello world",
    " Hello world",
    "Hello World!",
    "   leading spaces",
    "trailing spaces   ",
    "multiple     spaces     between",
    " \u00a0 no-break\u00a0space \u2003em\u2002en\u3000ideographic \u2009thin",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you're right, they'll say it's what we've done; I'd agree.",
    "I'M SURE YOU'RE RIGHT, THEY'LL SAY IT'S WHAT WE'VE DONE; I'D AGREE. 'S 'T 'LL",
    "don't 'tis 'twas rock'n'roll o'clock",
    "hello , world . ' s 'm 're 've ' t ? ! ...",
    "0",
    "42",
    "3.14159265358979",
    "1234567890123456789012345678901234567890",
    "12,345,678.90 1e-10 0x1F 0b1010 -7 +3",
    "2025-11-26 07:38:00 UTC",
    "١٢٣ ٤٥٦ ۷۸۹ ໑໒ ½ ⅓ ² ³ Ⅻ ⑳",
    "日本語のテキストです。",
    "中文文本，包含标点符号！",
    "한국어 텍스트입니다",
    "مرحبا بالعالم، كيف حالك؟",
    "שלום עולם",
    "Привет, мир! Ёлка",
    "Ελληνικά κείμενα",
    "हिन्दी पाठ",
    "ภาษาไทย",
    "e\u0301 a\u0300\u0301\u0302 n\u0303 combining marks",
    "Zalgo t\u0337\u0321e\u0336\u0322x\u0334t\u0335",
    "café naïve résumé Ångström façade",
    "ＡＢＣ１２３ fullwidth",
    "😀",
    "👍🏽 👋🏿",
    "👨\u200d👩\u200d👧\u200d👦 family",
    "🏳️\u200d🌈 ❤️\u200d🔥",
    "🇺🇸🇯🇵 flags",
    "emoji😀in😀words",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * 2; }",
    "<html><body class=\"main\">text</body></html>",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    "x = {'a': [1, 2, 3], \"b\": None}  # dict",
    "$HOME/bin:~/.local && echo $? | grep -v ^# > /dev/null",
    "a+b=c; a^b | ~c < d > e `cmd` @user #tag %20",
    "!!!??? ... --- *** ___ === +++ <<< >>> ||| ~~~ ^^^ $$$",
    "https://example.com/path?query=1&x=y#frag",
    "\x00\x01\x02 control \x7f chars \x1b[0m",
    "\u200b\u200c\u200d\u2060 zero-width \ufeff bom",
    "\u2028line\u2029para\x85next",
    "<|begin_of_text|>",
    "<|begin_of_text|>Hello<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
    "text <|end_of_text|> more",
    "<|reserved_special_token_0|><|reserved_special_token_10|>",
    "<s>",
    "<s>Hello</s>",
    " <s> spaced </s> ",
    "<unk>",
    "<0x41> <0x0A> not bytes",
    "▁already▁escaped ▁",
    "Ġ Ċ byte alphabet chars",
    "a" * 300,
    "ab" * 150,
    " " * 70,
    "\n" * 20 + "x",
    "word " * 60,
    "Mixed: 日本 English 123 😀 عربى\tend\n",
]

PROBE_POOL = [  # pieces random test strings are made of
    *" \t\n\r  \u00a0\u3000\u2009'sStTlLmMdDrReEvV",
    *"abcXYZ0123456789.,!?;:-_=+*/\\|<>()[]{}\"`~^$#@%&",
    "é", "ß", "ñ", "日", "本", "ア", "한", "ع", "\u0301", "\u0300", "👍", "🏽", "\u200d", "❤", "\ufe0f", "½", "²", "٣",
    "Ⅻ", "\u2028", "\x85", "\x00", "\x7f", "ǅ", "\U00011f04", "\U0001fa75", "\U00031350", "\U000e0001", "\ue000",
    "<|begin_of_text|>", "<|eot_id|>", "<s>", "</s>", "<unk>", " 's", "'ll", "  ", "\n\n", "1234",
]


# ---------------------------------------------------------------------------------------------------------------------
# Vocabularies: the fixture files, variants of them, the synthetic vocabulary


def _variant(src: Path, dst: Path, changes: dict[str, tuple[object, tuple[ValueType, ...]] | None]) -> Path:
    """A copy of a vocab-only GGUF with some tokenizer keys changed (None removes the key)."""
    with read_gguf(src) as g, GGUFWriter(dst) as w:
        for key, value in g.metadata.items():
            if key in changes:
                if changes[key] is not None:
                    w.add_kv(key, *changes[key])
                continue
            w.add_kv(key, value, g.value_types[key])
        for key, change in changes.items():
            if key not in g.metadata and change is not None:
                w.add_kv(key, *change)
        w.write_header()
    return dst


def _synthetic_vocab(tmp: Path) -> Path:
    """The synthetic model's file (its vocabulary is the project's own byte-level BPE)."""
    synth = pytest.importorskip("bitnet_ref.synth", reason="bitnet_ref.synth (the synthetic-model helper) is absent")
    return synth.cached_model(preset="tiny", fmt="f32", arch="bitnet", seed=0)


VOCABS = {
    "llama-bpe": lambda tmp: BPE_GGUF,
    "llama-spm": lambda tmp: SPM_GGUF,
    "bpe-pre-default": lambda tmp: _variant(BPE_GGUF, tmp / "default.gguf",
                                            {"tokenizer.ggml.pre": ("default", (ValueType.STRING,))}),
    "bpe-pre-gpt-2": lambda tmp: _variant(BPE_GGUF, tmp / "gpt2.gguf",
                                          {"tokenizer.ggml.pre": ("gpt-2", (ValueType.STRING,))}),
    "bpe-pre-missing": lambda tmp: _variant(BPE_GGUF, tmp / "missing.gguf", {"tokenizer.ggml.pre": None}),
    "spm-no-prefix-add-eos": lambda tmp: _variant(SPM_GGUF, tmp / "spm2.gguf", {
        "tokenizer.ggml.add_space_prefix": (False, (ValueType.BOOL,)),
        "tokenizer.ggml.add_eos_token": (True, (ValueType.BOOL,)),
    }),
    "synthetic": _synthetic_vocab,
}


class Pair:
    """Our tokenizer and llama.cpp's vocabulary for one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with read_gguf(path) as g:
            self.tok = Tokenizer.from_gguf(g)
        self.llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)

    def ref_ids(self, text: str, add_bos: bool, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def ref_detokenize(self, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
        arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
        buf = ctypes.create_string_buffer(64 * 1024)
        n = llama_cpp.llama_detokenize(self.vocab, arr, len(ids), buf, len(buf), remove_special, unparse_special)
        assert n >= 0, f"detokenize buffer too small ({-n} bytes)"
        return buf.raw[:n]

    def ref_piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(1024)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        assert n >= 0
        return buf.raw[:n]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """name -> Pair, each made once per module."""
    made: dict[str, Pair] = {}

    def get(name: str) -> Pair:
        if name not in made:
            made[name] = Pair(VOCABS[name](tmp_path_factory.mktemp(name)))
        return made[name]

    return get


@pytest.fixture(params=list(VOCABS))
def pair(request, pairs) -> Pair:
    return pairs(request.param)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.from_path(BPE_GGUF)


@pytest.fixture(scope="module")
def spm() -> Tokenizer:
    return Tokenizer.from_path(SPM_GGUF)


def _report(mismatches: list[str], what: str) -> None:
    assert not mismatches, f"{len(mismatches)} {what} differ from llama.cpp; first ones:\n" + "\n".join(mismatches[:8])


# ---------------------------------------------------------------------------------------------------------------------
# Parity with llama.cpp


def test_corpus_is_varied():
    assert len(CORPUS) >= 60 and len(set(CORPUS)) == len(CORPUS)


@pytest.mark.llama
def test_ids_equal_llama_cpp(pair):
    bad = []
    for text in CORPUS:
        for add_bos in (True, False):
            for special in (True, False):
                ref = pair.ref_ids(text, add_bos, special)
                got = pair.tok.encode(text, add_bos=add_bos, parse_special=special)
                if got != ref:
                    bad.append(f"{text!r} add_bos={add_bos} special={special}: llama.cpp {ref[:12]} ours {got[:12]}")
    _report(bad, "token id lists")


@pytest.mark.llama
def test_decode_equals_llama_detokenize(pair):
    bad = []
    for text in CORPUS:
        ids = pair.ref_ids(text, True, True)
        for remove_special in (False, True):
            for special in (False, True):
                ref = pair.ref_detokenize(ids, remove_special, special)
                got = pair.tok.decode_bytes(ids, special=special, remove_special=remove_special)
                if got != ref or pair.tok.decode(ids, special, remove_special) != ref.decode("utf-8", "replace"):
                    bad.append(f"{text!r} remove_special={remove_special} special={special}: {ref!r} vs {got!r}")
    _report(bad, "decoded texts")


@pytest.mark.llama
def test_every_piece_and_special_id_equals_llama_cpp(pair):
    tok = pair.tok
    assert tok.n_vocab == llama_cpp.llama_vocab_n_tokens(pair.vocab)
    # Variants share their base file's tokens: a sample of them plus every special token is enough there.
    ids = range(tok.n_vocab) if pair.path in BASE_FILES or tok.n_vocab < 1000 else sorted(
        {*range(0, tok.n_vocab, 61), *(t for t in range(tok.n_vocab) if tok.attr(t) != TokenAttr.NORMAL)})
    bad = [f"token {t} special={s}: {pair.ref_piece(t, s)!r} vs {tok.piece(t, s)!r}"
           for t in ids for s in (False, True) if tok.piece(t, s) != pair.ref_piece(t, s)]
    _report(bad, "pieces")
    eog = {t for t in range(tok.n_vocab) if llama_cpp.llama_vocab_is_eog(pair.vocab, t)}
    assert tok.eog_ids == eog
    assert (tok.bos_id, tok.eos_id) == (llama_cpp.llama_vocab_bos(pair.vocab), llama_cpp.llama_vocab_eos(pair.vocab))
    assert tok.add_bos == llama_cpp.llama_vocab_get_add_bos(pair.vocab)
    assert tok.add_eos == llama_cpp.llama_vocab_get_add_eos(pair.vocab)


@pytest.mark.llama
def test_random_strings_equal_llama_cpp(pair):
    rng = random.Random(20251126)
    bad = []
    for _ in range(300):
        text = "".join(rng.choice(PROBE_POOL) for _ in range(rng.randint(0, 24)))
        special = rng.random() < 0.5
        ref = pair.ref_ids(text, True, special)
        if pair.tok.encode(text, True, special) != ref:
            bad.append(f"{text!r} special={special}")
    _report(bad, "random strings")


def _codepoint_probe(codepoints) -> str:
    """Text whose split shows whether each codepoint is a letter, a number, a space or something else."""
    return "".join(f"x{chr(c)}x 1{chr(c)}1 .{chr(c)}. " for c in codepoints)


@pytest.mark.llama
@pytest.mark.parametrize("name", ["llama-bpe", "bpe-pre-default"])
def test_unicode_15_additions_and_sampled_codepoints_classify_like_llama_cpp(name, pairs):
    p = pairs(name)
    rng = random.Random(7)
    added = [c for first, last, _ in _UNICODE_15_ADDITIONS for c in range(first, last + 1)]
    sampled = [c for c in rng.sample(range(0x40000), 3000) if not 0xD800 <= c <= 0xDFFF]
    for chunk in (added, sampled):
        text = _codepoint_probe(chunk)
        assert p.tok.encode(text, False, False) == p.ref_ids(text, False, False)


@pytest.mark.slow
@pytest.mark.llama
@pytest.mark.parametrize("name", ["llama-bpe", "bpe-pre-default"])
def test_every_codepoint_classifies_like_llama_cpp(name, pairs):
    p = pairs(name)
    codepoints = [c for c in [*range(0x40000), *range(0xE0000, 0xE0200)] if not 0xD800 <= c <= 0xDFFF]
    bad = []
    for i in range(0, len(codepoints), 4000):
        text = _codepoint_probe(codepoints[i : i + 4000])
        if p.tok.encode(text, False, False) != p.ref_ids(text, False, False):
            bad.append(f"chunk starting at U+{codepoints[i]:04X}")
    _report(bad, "codepoint chunks")


# ---------------------------------------------------------------------------------------------------------------------
# Behaviour without llama.cpp


def test_llama3_words(bpe):
    words = pre_tokenize("I'LL see 12345 cats!!\n\n  ok", "llama3")
    assert words == ["I", "'LL", " see", " ", "123", "45", " cats", "!!\n\n", " ", " ok"]
    assert pre_tokenize("a\u00a0b", "llama3") == ["a", "\u00a0b"]


def test_default_words_split_punctuation_then_digits():
    assert pre_tokenize("x+=12345", "default") == ["x", "+=", "123", "45"]
    assert pre_tokenize("it's 1234", "gpt-2") == ["it", "'s", " 1234"]


def test_bos_and_special_handling(bpe, spm):
    bos = bpe.bos_id
    assert bpe.encode("", add_bos=True) == [bos] and bpe.encode("", add_bos=False) == []
    assert bpe.encode("<|begin_of_text|>hi", add_bos=False) == [bos, bpe.token_id("hi")]
    assert bos not in bpe.encode("<|begin_of_text|>hi", add_bos=False, parse_special=False)
    assert spm.encode("Hello")[0] == spm.bos_id and spm.decode(spm.encode("Hello", add_bos=False)) == "Hello"
    assert spm.decode(spm.encode("Hello")) == " Hello"  # llama.cpp strips the prefix space only from the first token
    assert spm.encode("<s>", add_bos=False) == [spm.bos_id]
    assert bpe.is_eog(bpe.eos_id) and bpe.is_eog(bpe.token_id("<|eot_id|>")) and not bpe.is_eog(bos)


def test_decode_is_exact_bytes_until_the_end(bpe):
    ids = bpe.encode("😀 héllo", add_bos=False)
    pieces = b"".join(bpe.piece(t) for t in ids)
    assert pieces == "😀 héllo".encode() and bpe.decode(ids) == "😀 héllo"
    emoji = [bpe.token_id(BYTE_CHARS[b]) for b in "😀".encode()]
    assert bpe.decode_bytes(emoji[:2]) == "😀".encode()[:2]
    assert bpe.decode(emoji[:2]) == "\ufffd"
    assert bpe.decode(emoji) == "😀"


def test_spm_byte_fallback(spm):
    ids = spm.encode("\U0001f9ff", add_bos=False)  # not in the Llama 2 vocabulary: ▁ then 4 byte tokens
    assert [spm.attr(t) for t in ids[1:]] == [TokenAttr.BYTE] * 4
    assert spm.decode_bytes(ids) == "\U0001f9ff".encode() and spm.decode(ids, special=True) == "\U0001f9ff"


def test_hidden_tokens_render_only_when_asked(bpe):
    eot = bpe.token_id("<|eot_id|>")
    assert bpe.piece(eot) == b"" and bpe.piece(eot, special=True) == b"<|eot_id|>"
    assert bpe.decode([eot], special=True) == "<|eot_id|>"


def test_merge_heap_twin_matches_simple_loop(bpe):
    rng = random.Random(3)
    ranks = bpe._encoder.ranks
    for _ in range(200):
        word = "".join(rng.choice("aeinrst Ġ") for _ in range(rng.randint(2, 120)))
        assert _merge_heap(list(word), ranks, " ") == _simple_merge(list(word), ranks)
    assert merge_pairs(list("x" * 500), ranks, " ") == _simple_merge(list("x" * 500), ranks)


def _simple_merge(symbols: list[str], ranks: dict[str, int]) -> list[str]:
    """Textbook BPE: merge the lowest-ranked adjacent pair, leftmost first, until none is left."""
    while True:
        pairs = [(ranks[a + " " + b], i) for i, (a, b) in enumerate(zip(symbols, symbols[1:], strict=False))
                 if a + " " + b in ranks]
        if not pairs:
            return symbols
        _, i = min(pairs)
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]


def test_encode_speed_1000_words(bpe, spm):
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while 42 cats, 7 owls and I'd watch".split()
    text = " ".join(rng.choice(words) for _ in range(1000))
    for tok in (bpe, spm):
        tok.encode(text)
        start = time.perf_counter()
        tok.encode(text)
        assert time.perf_counter() - start < 0.25, "encoding 1000 cached words should take ~10 ms"


def test_from_gguf_accepts_a_mapping(spm):
    with read_gguf(SPM_GGUF) as g:
        meta = dict(g.metadata)
    assert Tokenizer.from_gguf(meta).encode("Hi there") == spm.encode("Hi there")


# ---------------------------------------------------------------------------------------------------------------------
# Errors


def _tiny_meta(**over) -> dict:
    tokens = [*BYTE_CHARS, "ab", "<|bos|>"]
    meta = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * 257 + [3], "tokenizer.ggml.merges": ["a b"],
        "tokenizer.ggml.bos_token_id": 257, "tokenizer.ggml.eos_token_id": 257,
    }
    meta.update(over)
    return {k: v for k, v in meta.items() if v is not None}


def test_tiny_vocabulary_works():
    tok = Tokenizer(_tiny_meta())
    assert tok.encode("abc") == [257, 256, BYTE_CHARS.index("c")]
    assert tok.decode(tok.encode("abc")) == "abc"


@pytest.mark.parametrize("over, needle", [
    ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens: missing"),
    ({"tokenizer.ggml.tokens": []}, "tokenizer.ggml.tokens is empty"),
    ({"tokenizer.ggml.tokens": [*BYTE_CHARS, "a", "<|bos|>"]}, "repeats token"),
    ({"tokenizer.ggml.merges": None}, "tokenizer.ggml.merges: missing"),
    ({"tokenizer.ggml.merges": "a b"}, "expected an array of strings"),
    ({"tokenizer.ggml.model": "bert"}, "tokenizer.ggml.model = 'bert'"),
    ({"tokenizer.ggml.model": None}, "tokenizer.ggml.model = None"),
    ({"tokenizer.ggml.pre": "gpt2"}, "tokenizer.ggml.pre = 'gpt2': unsupported"),
    ({"tokenizer.ggml.bos_token_id": 258}, "tokenizer.ggml.bos_token_id = 258"),
    ({"tokenizer.ggml.eos_token_id": -1}, "tokenizer.ggml.eos_token_id = -1"),
    ({"tokenizer.ggml.token_type": [1] * 10}, "tokenizer.ggml.token_type has 10 entries for 258 tokens"),
    ({"tokenizer.ggml.add_bos_token": "yes"}, "tokenizer.ggml.add_bos_token = 'yes'"),
])
def test_bad_metadata_raises_tokenizer_error_naming_key_and_value(over, needle):
    with pytest.raises(TokenizerError, match=None) as info:
        Tokenizer(_tiny_meta(**over))
    assert needle in str(info.value)


def test_bad_inputs_raise_typed_errors(bpe):
    with pytest.raises(TokenRangeError, match="128256"):
        bpe.piece(128256)
    with pytest.raises(TokenRangeError):
        bpe.decode([1, -1])
    with pytest.raises(TokenizerError, match="lone|surrogate|not valid"):
        bpe.encode("a\ud800b")
    with pytest.raises(TokenizerError, match="must be a str"):
        bpe.encode(b"bytes")
    with pytest.raises(TokenizerError, match="BYTE token"):
        Tokenizer(_tiny_meta(**{"tokenizer.ggml.token_type": [1] * 256 + [6, 3]})).piece(256)
