"""Decode tok/s of bitnet_ref and llama.cpp on the same GGUF and thread count (a script, not a test).

    python -m bench.engine_decode [--preset 2b4t] [--fmt tq2_0] [--threads 2] [--tokens 32] [--reps 3] [--model FILE]

Both engines get a short prompt, then decode `--tokens` tokens one at a time (llama.cpp: flash attention off,
one-token batches; bitnet_ref: ggml numerics). Runs alternate A B A B (the host's bandwidth drifts; PERFORMANCE.md)
and the median and range of each engine's tok/s are printed. bitnet_ref's numba compile happens in a warm-up run
and is reported separately.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

PROMPT_TOKENS = 8


def bitnet_ref_decode(model, prompt: np.ndarray, steps: np.ndarray) -> float:
    """Seconds per decoded token of bitnet_ref after a prefill of `prompt`."""
    model.kv.reset()
    model.forward(prompt, 0, all_logits=False)
    t0 = time.perf_counter()
    for i, tok in enumerate(steps):
        model.forward(np.array([tok], np.int32), len(prompt) + i, all_logits=False)
    return (time.perf_counter() - t0) / len(steps)


class LlamaDecoder:
    """llama.cpp through llama-cpp-python's low-level API (FA off), decoding one token per batch."""

    def __init__(self, path: Path, threads: int, n_ctx: int) -> None:
        import llama_cpp.llama_cpp as L

        self.L = L
        self._log = L.llama_log_callback(lambda level, text, ud: None)
        L.llama_log_set(self._log, None)
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = 0
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.batch = L.llama_batch_init(512, 0, 1)

    def _decode(self, tokens: np.ndarray, pos0: int) -> None:
        b = self.batch
        for i, tok in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = int(tok), pos0 + i, 1, int(i == len(tokens) - 1)
            b.seq_id[i][0] = 0
        b.n_tokens = len(tokens)
        if self.L.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def decode(self, prompt: np.ndarray, steps: np.ndarray) -> float:
        """Seconds per decoded token after a prefill of `prompt`."""
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)
        self._decode(prompt, 0)
        t0 = time.perf_counter()
        for i, tok in enumerate(steps):
            self._decode(np.array([tok]), len(prompt) + i)
        return (time.perf_counter() - t0) / len(steps)

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def _summary(name: str, secs: list[float]) -> str:
    rates = sorted(1.0 / s for s in secs)
    return (
        f"{name:>10}: {statistics.median(rates):6.2f} tok/s (range {rates[0]:.2f}-{rates[-1]:.2f}, {len(rates)} runs)"
    )


def main() -> None:
    """Parse arguments, time both engines alternately, print the medians."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="2b4t")
    ap.add_argument("--fmt", default="tq2_0")
    ap.add_argument("--model", type=Path, default=None, help="a GGUF file instead of the synthetic preset")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-llama", action="store_true", help="time bitnet_ref only")
    args = ap.parse_args()

    from bitnet_ref import synth
    from bitnet_ref.model import load_model

    path = args.model or synth.cached_model(preset=args.preset, fmt=args.fmt, arch="bitnet", seed=0)
    n_ctx = PROMPT_TOKENS + args.tokens + 16
    model = load_model(path, "ggml", n_threads=args.threads, n_ctx=n_ctx)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, model.config.n_vocab, PROMPT_TOKENS).astype(np.int32)
    steps = rng.integers(0, model.config.n_vocab, args.tokens).astype(np.int32)
    t0 = time.perf_counter()
    bitnet_ref_decode(model, prompt, steps[:2])
    print(f"model {path}\nthreads {args.threads}, {args.tokens} decoded tokens per run, numerics {model.numerics}")
    print(f"bitnet_ref warm-up (numba compile or cache load + 2 tokens): {time.perf_counter() - t0:.1f} s")
    llama = None if args.no_llama else LlamaDecoder(path, args.threads, n_ctx)
    ours, theirs = [], []
    for _ in range(args.reps):
        ours.append(bitnet_ref_decode(model, prompt, steps))
        if llama is not None:
            theirs.append(llama.decode(prompt, steps))
    print(_summary("bitnet_ref", ours))
    if llama is not None:
        print(_summary("llama.cpp", theirs))
        llama.close()


if __name__ == "__main__":
    main()
