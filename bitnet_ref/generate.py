"""Text generation: the prompt in one batched prefill, then one token per step through the KV cache, streamed.

`generate(...)` is an iterator: one TokenEvent per generated token, then one GenerationResult (tokens, text, timings,
sampler settings and seed). Text leaves the stream only as complete UTF-8 characters, and text that could be the start
of a stop string is held back until it is known not to be one; a stop string itself is never emitted.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from bitnet_ref.errors import ConfigError, ContextOverflowError, EngineError, TokenRangeError
from bitnet_ref.sampling import SamplerConfig, rng_seed, sample
from bitnet_ref.tokenizer import Tokenizer

FINISH_EOS = "eos"  # the model produced an end-of-generation token
FINISH_LENGTH = "length"  # n_predict tokens were generated
FINISH_STOP = "stop"  # the text reached a stop string


@dataclass(frozen=True)
class TokenEvent:
    """One generated token: its id, its bytes and the text it releases (possibly empty, possibly several chars)."""

    index: int  # 0 for the first generated token
    token_id: int
    piece: bytes  # llama_token_to_piece(special=False): control tokens are empty
    text: str  # complete characters released by this token (held-back text comes out with a later token)


@dataclass(frozen=True)
class Timings:
    """Wall-clock times of one generation; compile time (warmup) is kept apart from run time."""

    prompt_tokens: int
    generated_tokens: int
    prefill_s: float  # the batched forward pass over the prompt
    decode_steps: int  # one-token forward passes (every generated token but the last is fed back)
    decode_s: float  # time in those forward passes
    sample_s: float  # time choosing tokens
    ttft_s: float  # start of generate() to the first token chosen (prefill + first sample)
    total_s: float
    compile_s: float | None = None  # from warmup(), when the caller measured it

    @property
    def prefill_tok_s(self) -> float:
        """Prompt tokens per second of prefill."""
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("nan")

    @property
    def decode_tok_s(self) -> float:
        """Tokens per second of the one-token decode steps."""
        return self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")

    def describe(self) -> dict[str, object]:
        """All fields and rates, for records."""
        return {**asdict(self), "prefill_tok_s": self.prefill_tok_s, "decode_tok_s": self.decode_tok_s}


@dataclass(frozen=True)
class GenerationResult:
    """The end of a generation: what was generated, why it stopped, how long it took and with which settings."""

    prompt_tokens: tuple[int, ...]
    tokens: tuple[int, ...]  # generated ids, an end-of-generation token included
    text: str  # the streamed text, stop string excluded
    finish_reason: str  # FINISH_EOS, FINISH_LENGTH or FINISH_STOP
    stop: str | None  # the stop string that ended it
    timings: Timings
    sampler: dict[str, object]
    seed: int | None  # the integer the Generator was seeded with, when known

    def describe(self) -> dict[str, object]:
        """Everything but the prompt ids, for records."""
        return {
            "n_prompt": len(self.prompt_tokens), "tokens": list(self.tokens), "text": self.text,
            "finish_reason": self.finish_reason, "stop": self.stop, "timings": self.timings.describe(),
            "sampler": self.sampler, "seed": self.seed,
        }


class _TextStream:
    """Bytes in, releasable text out: incremental UTF-8, and text held back while it could begin a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""

    def push(self, piece: bytes, final: bool = False) -> tuple[str, str | None]:
        """Text released by these bytes and the stop string found (then nothing more is released)."""
        self.pending += self.decoder.decode(piece, final=final)
        hits = [(self.pending.find(s), -len(s), s) for s in self.stops if s in self.pending]
        if hits:
            pos, _, stop = min(hits)
            text, self.pending = self.pending[:pos], ""
            return text, stop
        hold = 0 if final else self._held()
        text, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return text, None

    def _held(self) -> int:
        """Length of the longest end of pending text that is a proper prefix of a stop string."""
        for k in range(min(len(self.pending), max((len(s) for s in self.stops), default=1) - 1), 0, -1):
            tail = self.pending[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0


def _release(stream: _TextStream, piece: bytes, eog: bool, last: bool) -> tuple[str, str | None, str | None]:
    """Text a token releases, why generation ends after it (None: it goes on) and the stop string that ended it."""
    text, hit = stream.push(piece)
    if hit is None and (eog or last):
        more, hit = stream.push(b"", final=True)
        text += more
        if hit is None:
            return text, FINISH_EOS if eog else FINISH_LENGTH, None
    return text, None if hit is None else FINISH_STOP, hit


def _prompt_ids(tokenizer: Tokenizer, prompt: str | Sequence[int]) -> list[int]:
    """Prompt token ids: a str is encoded with BOS and special tokens, a sequence of ids is taken as is."""
    if isinstance(prompt, str):
        if not prompt:
            raise EngineError("empty prompt: give some text or token ids")
        ids = tokenizer.encode(prompt, add_bos=True, parse_special=True)
    else:
        ids = [int(t) for t in prompt]
    if not ids:
        raise EngineError("empty prompt: no tokens to evaluate")
    return ids


def _check(model: object, tokenizer: Tokenizer, ids: list[int], n_predict: int) -> None:
    """Typed errors for a generation that cannot run: bad n_predict, vocabulary mismatch, ids, context length."""
    n_vocab, n_ctx = model.config.n_vocab, model.kv.n_ctx
    if isinstance(n_predict, bool) or not isinstance(n_predict, (int, np.integer)) or n_predict < 0:
        raise EngineError(f"n_predict = {n_predict!r}: expected an integer >= 0")
    if tokenizer.n_vocab != n_vocab:
        raise ConfigError(f"the tokenizer has {tokenizer.n_vocab} tokens but the model n_vocab = {n_vocab}")
    bad = [(i, t) for i, t in enumerate(ids) if not 0 <= t < n_vocab]
    if bad:
        i, t = bad[0]
        raise TokenRangeError(f"prompt token {t} at index {i} is outside the vocabulary [0, {n_vocab})")
    if len(ids) + n_predict > n_ctx:
        raise ContextOverflowError(f"prompt of {len(ids)} tokens + n_predict {n_predict} = {len(ids) + n_predict} "
                                   f"tokens exceeds the context n_ctx = {n_ctx}")


def warmup(model: object) -> float:
    """Compile (or load from numba's cache) the kernels of a prefill and a decode step, empty the KV cache; seconds."""
    start = time.perf_counter()
    n_prefill = 2 if model.kv.n_ctx >= 3 else 1
    model.forward(np.zeros(n_prefill, np.int32), 0, all_logits=False)
    if model.kv.n_ctx > n_prefill:
        model.forward(np.zeros(1, np.int32), n_prefill, all_logits=False)
    model.kv.reset()
    return time.perf_counter() - start


def generate(
    model: object,
    tokenizer: Tokenizer,
    prompt: str | Sequence[int],
    n_predict: int,
    sampler: SamplerConfig,
    rng: np.random.Generator,
    stop: Sequence[str] = (),
    compile_s: float | None = None,
) -> Iterator[TokenEvent | GenerationResult]:
    """Stream a generation: a TokenEvent per token, then the GenerationResult. Stops at an end-of-generation token,
    after n_predict tokens, or when the text reaches a stop string. Checks run at once; the KV cache is reset first."""
    ids = _prompt_ids(tokenizer, prompt)
    _check(model, tokenizer, ids, n_predict)
    return _run(model, tokenizer, ids, n_predict, sampler, rng, _TextStream(stop), compile_s)


def _run(
    model: object,
    tokenizer: Tokenizer,
    ids: list[int],
    n_predict: int,
    sampler: SamplerConfig,
    rng: np.random.Generator,
    stream: _TextStream,
    compile_s: float | None,
) -> Iterator[TokenEvent | GenerationResult]:
    """The generation loop behind generate()."""
    start = time.perf_counter()
    model.kv.reset()
    logits = model.forward(np.asarray(ids, np.int32), 0, all_logits=False)[-1]
    prefill_s = time.perf_counter() - start
    history, generated, texts = list(ids), [], []
    decode_s = sample_s = ttft_s = 0.0
    finish, hit = FINISH_LENGTH, None
    for i in range(n_predict):
        if i > 0:
            t = time.perf_counter()
            logits = model.forward(np.asarray(generated[-1:], np.int32), len(ids) + i - 1, all_logits=False)[-1]
            decode_s += time.perf_counter() - t
        t = time.perf_counter()
        token = sample(logits, sampler, rng, history)
        sample_s += time.perf_counter() - t
        if i == 0:
            ttft_s = time.perf_counter() - start
        generated.append(token)
        history.append(token)
        piece = tokenizer.piece(token)
        text, end, hit = _release(stream, piece, tokenizer.is_eog(token), i == n_predict - 1)
        texts.append(text)
        yield TokenEvent(i, token, piece, text)
        if end is not None:
            finish = end
            break
    timings = Timings(
        prompt_tokens=len(ids), generated_tokens=len(generated), prefill_s=prefill_s,
        decode_steps=max(len(generated) - 1, 0), decode_s=decode_s, sample_s=sample_s, ttft_s=ttft_s,
        total_s=time.perf_counter() - start, compile_s=compile_s,
    )
    yield GenerationResult(
        prompt_tokens=tuple(ids), tokens=tuple(generated), text="".join(texts), finish_reason=finish, stop=hit,
        timings=timings, sampler=sampler.describe(), seed=rng_seed(rng),
    )


def generate_all(
    model: object,
    tokenizer: Tokenizer,
    prompt: str | Sequence[int],
    n_predict: int,
    sampler: SamplerConfig,
    rng: np.random.Generator,
    stop: Sequence[str] = (),
    compile_s: float | None = None,
) -> GenerationResult:
    """Run generate() to the end and return its GenerationResult."""
    for event in generate(model, tokenizer, prompt, n_predict, sampler, rng, stop, compile_s):
        if isinstance(event, GenerationResult):
            return event
    raise EngineError("generate() ended without a result")
