"""Generation: streaming, stop conditions and errors on a scripted fake model; then the real engine on a synthetic
model (greedy equals a hand-written loop, same seed -> same tokens across runs and thread counts)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from bitnet_ref.bpe import BYTE_CHARS
from bitnet_ref.errors import ConfigError, ContextOverflowError, EngineError, TokenRangeError
from bitnet_ref.generate import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationResult,
    TokenEvent,
    generate,
    generate_all,
    warmup,
)
from bitnet_ref.sampling import GREEDY, SamplerConfig, make_rng
from bitnet_ref.tokenizer import Tokenizer
from bitnet_ref.vocab import build_vocabulary

N_VOCAB = 512


# ---------------------------------------------------------------------------------------------------------------------
# A scripted fake model: forward() returns logits whose argmax is the next scripted token


@dataclass
class FakeConfig:
    n_vocab: int
    n_ctx: int


@dataclass
class FakeKV:
    n_ctx: int
    n_past: int = 0

    def reset(self) -> None:
        self.n_past = 0


@dataclass
class ScriptedModel:
    """Model API stand-in: call k of forward() makes script[k] the most likely next token."""

    script: list[int]
    n_ctx: int = 64
    calls: list[tuple[list[int], int, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.config = FakeConfig(N_VOCAB, self.n_ctx)
        self.kv = FakeKV(self.n_ctx)

    def forward(self, tokens: np.ndarray, start_pos: int, all_logits: bool = True) -> np.ndarray:
        assert tokens.dtype == np.int32 and start_pos == self.kv.n_past
        self.calls.append((tokens.tolist(), start_pos, all_logits))
        self.kv.n_past = start_pos + len(tokens)
        logits = np.zeros((1, N_VOCAB), np.float32)
        logits[0, self.script[len(self.calls) - 1]] = 10.0
        return logits


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    vocab = build_vocabulary(N_VOCAB)
    return Tokenizer({key: value for key, value, _ in vocab.metadata()})


def byte_ids(tok: Tokenizer, data: bytes) -> list[int]:
    return [tok.token_id(BYTE_CHARS[b]) for b in data]


def run(model, tok, n_predict, stop=(), prompt="Hello world") -> tuple[list[TokenEvent], GenerationResult]:
    events = list(generate(model, tok, prompt, n_predict, GREEDY, make_rng(0), stop=stop))
    assert isinstance(events[-1], GenerationResult) and all(isinstance(e, TokenEvent) for e in events[:-1])
    return events[:-1], events[-1]


# ---------------------------------------------------------------------------------------------------------------------
# Streaming and stopping


def test_prefill_once_then_one_token_per_step(tok):
    model = ScriptedModel(byte_ids(tok, b"abcd"))
    events, result = run(model, tok, 4)
    prompt = tok.encode("Hello world")
    assert model.calls[0] == (prompt, 0, False)
    assert model.calls[1:] == [([t], len(prompt) + i, False) for i, t in enumerate(result.tokens[:-1])]
    assert result.text == "abcd" and result.finish_reason == FINISH_LENGTH and result.stop is None
    assert [e.index for e in events] == [0, 1, 2, 3] and result.prompt_tokens == tuple(prompt)


def test_multibyte_characters_are_released_when_complete(tok):
    model = ScriptedModel(byte_ids(tok, "é😀".encode()))
    events, result = run(model, tok, 6)
    assert [e.text for e in events] == ["", "é", "", "", "", "😀"]
    assert b"".join(e.piece for e in events) == "é😀".encode() and result.text == "é😀"


def test_incomplete_character_at_the_end_becomes_a_replacement(tok):
    model = ScriptedModel(byte_ids(tok, "😀".encode()[:2]))
    events, result = run(model, tok, 2)
    assert [e.text for e in events] == ["", "\ufffd"] and result.text == "\ufffd"


def test_end_of_generation_token_stops(tok):
    model = ScriptedModel([*byte_ids(tok, b"ab"), tok.eos_id, *byte_ids(tok, b"c")])
    events, result = run(model, tok, 10)
    assert result.finish_reason == FINISH_EOS and result.tokens[-1] == tok.eos_id
    assert result.text == "ab" and events[-1].piece == b"" and len(model.calls) == 3


def test_stop_string_is_held_back_and_not_emitted(tok):
    model = ScriptedModel(byte_ids(tok, b"ab STx STOP tail"))
    events, result = run(model, tok, 16, stop=["STOP"])
    texts = [e.text for e in events]
    assert texts[:7] == ["a", "b", " ", "", "", "STx", " "]
    assert result.text == "ab STx " and result.finish_reason == FINISH_STOP and result.stop == "STOP"
    assert len(result.tokens) == len("ab STx STOP")


def test_held_text_is_flushed_when_generation_ends(tok):
    model = ScriptedModel(byte_ids(tok, b"xyST"))
    events, result = run(model, tok, 4, stop=["STOP"])
    assert [e.text for e in events] == ["x", "y", "", "ST"] and result.text == "xyST"


def test_earliest_stop_string_wins(tok):
    _, result = run(ScriptedModel(byte_ids(tok, b"one two three")), tok, 13, stop=["two", "e t"])
    assert result.text == "on" and result.stop == "e t"
    _, result = run(ScriptedModel(byte_ids(tok, b"one two three")), tok, 13, stop=["hree", "three"])
    assert result.text == "one two " and result.stop == "three"


def test_result_records_timings_sampler_and_seed(tok):
    model = ScriptedModel(byte_ids(tok, b"abc"))
    config = SamplerConfig(temperature=0.0, top_k=7)
    result = generate_all(model, tok, [tok.bos_id, 5, 6], 3, config, make_rng(1234), compile_s=1.5)
    t = result.timings
    assert (t.prompt_tokens, t.generated_tokens, t.decode_steps, t.compile_s) == (3, 3, 2, 1.5)
    assert 0 < t.prefill_s <= t.ttft_s <= t.total_s and t.decode_s > 0 and t.prefill_tok_s > 0 and t.decode_tok_s > 0
    assert result.sampler["top_k"] == 7 and result.sampler["greedy"] and result.seed == 1234
    assert result.describe()["timings"]["decode_tok_s"] == t.decode_tok_s


def test_n_predict_zero_only_prefills(tok):
    model = ScriptedModel([1])
    events, result = run(model, tok, 0)
    assert events == [] and result.tokens == () and len(model.calls) == 1


# ---------------------------------------------------------------------------------------------------------------------
# Errors (raised by the call itself, before any iteration)


def test_empty_prompt_is_refused(tok):
    with pytest.raises(EngineError, match="empty prompt"):
        generate(ScriptedModel([1]), tok, "", 4, GREEDY, make_rng(0))
    with pytest.raises(EngineError, match="empty prompt"):
        generate(ScriptedModel([1]), tok, [], 4, GREEDY, make_rng(0))


def test_token_ids_out_of_range_are_refused(tok):
    with pytest.raises(TokenRangeError, match=r"prompt token 512 at index 1 .*\[0, 512\)"):
        generate(ScriptedModel([1]), tok, [1, 512], 4, GREEDY, make_rng(0))


def test_context_overflow_names_the_numbers(tok):
    model = ScriptedModel([1], n_ctx=16)
    with pytest.raises(ContextOverflowError, match=r"prompt of 10 tokens \+ n_predict 7 = 17 .* n_ctx = 16"):
        generate(model, tok, list(range(10)), 7, GREEDY, make_rng(0))
    generate(model, tok, list(range(10)), 6, GREEDY, make_rng(0))


def test_bad_n_predict_and_vocabulary_mismatch(tok):
    with pytest.raises(EngineError, match="n_predict"):
        generate(ScriptedModel([1]), tok, [1], -1, GREEDY, make_rng(0))
    model = ScriptedModel([1])
    model.config = FakeConfig(N_VOCAB + 1, 64)
    with pytest.raises(ConfigError, match="512 tokens but the model n_vocab = 513"):
        generate(model, tok, [1], 1, GREEDY, make_rng(0))


# ---------------------------------------------------------------------------------------------------------------------
# The real engine on a synthetic model


@pytest.fixture(scope="module")
def synthetic_path():
    from bitnet_ref.synth import cached_model

    return cached_model(preset="tiny", fmt="tq2_0", arch="bitnet", seed=0)


@pytest.fixture(scope="module")
def engine(synthetic_path):
    from bitnet_ref.model import load_model

    model = load_model(synthetic_path, numerics="ggml", n_threads=2)
    return model, Tokenizer.from_path(synthetic_path)


def test_warmup_reports_time_and_empties_the_cache(engine):
    model, _ = engine
    assert warmup(model) > 0 and model.kv.n_past == 0


def test_greedy_generation_equals_a_hand_written_loop(engine):
    model, tok = engine
    prompt = tok.encode("Four score and seven years ago")
    result = generate_all(model, tok, prompt, 12, GREEDY, make_rng(0))
    model.kv.reset()
    logits = model.forward(np.asarray(prompt, np.int32), 0, all_logits=False)[-1]
    expected = []
    for i in range(len(result.tokens)):
        expected.append(int(np.argmax(logits)))
        if tok.is_eog(expected[-1]) or i == len(result.tokens) - 1:
            break
        logits = model.forward(np.asarray(expected[-1:], np.int32), len(prompt) + i, all_logits=False)[-1]
    assert list(result.tokens) == expected
    assert result.text == b"".join(tok.piece(t) for t in expected).decode("utf-8", "replace")


def test_same_seed_same_tokens_across_runs_and_thread_counts(synthetic_path):
    from bitnet_ref.model import load_model

    tok = Tokenizer.from_path(synthetic_path)
    config = SamplerConfig(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0)
    runs = []
    for n_threads in (1, 2, 2):
        model = load_model(synthetic_path, numerics="ggml", n_threads=n_threads)
        runs.append(generate_all(model, tok, "The world will little note", 24, config, make_rng(42)).tokens)
    assert runs[0] == runs[1] == runs[2]
    other = generate_all(model, tok, "The world will little note", 24, config, make_rng(43)).tokens
    assert other != runs[0]


def test_real_model_context_overflow(engine):
    model, tok = engine
    with pytest.raises(ContextOverflowError, match=f"n_ctx = {model.kv.n_ctx}"):
        generate(model, tok, [tok.bos_id] * 10, model.kv.n_ctx, GREEDY, make_rng(0))
