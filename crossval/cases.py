"""The case matrix: models × formats × prompts × profiles × threads, and the files each engine gets.

Synthetic models come from bitnet_ref.synth. llama.cpp cannot load bitnet.cpp's I2_S, TL1 and TL2, so it gets the
lossless TQ2_0 twin (the "i2_s_arm" format is I2_S in the ARM layout, which bitnet_ref is told to read); it does not
know the fork's `bitnet-b1.58` architecture, so it gets a relabelled copy (arch `bitnet`, where it runs SiLU: the
relu² case, an expected divergence). `BITNET_GGUF=path` adds a user's model to the matrix.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bitnet_ref import cuda
from bitnet_ref.constants import ARCH_BITNET, ARCH_BITNET_B158, KEY_ARCHITECTURE
from bitnet_ref.formats import BF16, F16, F32, I2_S, I2_S_ARM, IQ2_S, Q8_0, TL1, TL2, TQ1_0, TQ2_0
from bitnet_ref.synth import FORMATS as SYNTH_FORMATS

LAYOUT_FORMATS = (I2_S_ARM.NAME,)  # a layout of another format: a few cases of its own, not the whole product
FORMATS = tuple(f for f in SYNTH_FORMATS if f not in LAYOUT_FORMATS)  # the formats of the case product
PROFILES = ("ggml", "bitnet")
THREADS = (1, 2)
SYNTH_PRESETS = ("tiny", "small")
USER_MODEL_ENV = "BITNET_GGUF"
LONG_FILL = 0.8  # the long prompt fills this fraction of the compared context
LONG_CTX_CAP = 1024  # ... of at most this many tokens (every position's logits and activations are held)
N_GREEDY = 8
USER_FORMAT_PRIORITY = (I2_S, TL1, TL2, TQ1_0, TQ2_0, IQ2_S, Q8_0, BF16, F16, F32)  # a user model's label
RELABEL_SUFFIX = ".as-bitnet.gguf"

PROMPTS: dict[str, str] = {
    "hello": "Hello world",
    "mixed": "The quick brown fox jumps over 13 lazy dogs; naïve café — 東京 🚀!\n\tx = f(y) + 42  # done",
    "long": "",  # built per tokenizer by long_prompt(): fills most of the context
}
# Tokenizer parity corpus, checked on every model besides the prompts themselves.
CORPUS: tuple[str, ...] = (
    "",
    " ",
    "   leading and trailing spaces   ",
    "don't we'll they've I'M",
    "1234567890 3.14159 -42 1e-5",
    "line one\nline two\r\n\n\ttabbed",
    "<|begin_of_text|>after a special token<|end_of_text|>",
    "Ünïcödé ß ø 中文 日本語 한국어 العربية emoji 🙂👍🏽",
    "def f(x):\n    return x**2  # comment",
    "a" * 64,
)
LONG_SENTENCES = (
    "BitNet b1.58 stores every weight as minus one, zero or one, with one scale per tensor.",
    "The reference engine and llama.cpp must agree layer by layer, position by position.",
    "Numbers like 2560, 6912 and 128256 describe the shapes of the official model.",
    "A careful harness shows where two implementations part, not only that they do.",
)


@dataclass(frozen=True)
class Case:
    """One comparison: a model, a prompt, a numerics profile and a thread count."""

    preset: str  # synth preset, or "user" for BITNET_GGUF
    fmt: str
    prompt: str
    profile: str
    threads: int
    arch: str = ARCH_BITNET  # the engine's model architecture (llama.cpp always gets arch bitnet)
    seed: int = 0
    user_path: str | None = None
    flash_attn: bool = False
    n_greedy: int = N_GREEDY
    device: str = "cpu"  # where bitnet_ref runs (bitnet_ref.device); the reference is llama.cpp on the CPU

    @property
    def id(self) -> str:
        """Readable unique id, e.g. tiny-tq2_0-hello-ggml-t2 (arch appended when not bitnet, the device when not the
        CPU)."""
        arch = "" if self.arch == ARCH_BITNET else f"-{self.arch}"
        fa = "-fa" if self.flash_attn else ""
        device = "" if self.device == "cpu" else f"-{self.device}"
        return f"{self.preset}{arch}-{self.fmt}-{self.prompt}-{self.profile}-t{self.threads}{fa}{device}"

    @property
    def group(self) -> str:
        """The id without the prompt: the cases that share one pair of loaded backends."""
        return self.id.replace(f"-{self.prompt}-", "-", 1)

    @property
    def model_key(self) -> tuple:
        """Cases with the same key share loaded backends."""
        return (self.preset, self.fmt, self.arch, self.seed, self.user_path, self.profile, self.threads,
                self.flash_attn, self.device)

    @property
    def i2s_layout(self) -> str:
        """The I2_S layout bitnet_ref reads the engine's file with: "arm" for the i2_s_arm format, else "x86"."""
        return "arm" if self.fmt == I2_S_ARM.NAME else "x86"

    def describe(self) -> dict:
        """All fields plus the id."""
        return {"case": self.id, **asdict(self), "i2s_layout": self.i2s_layout}


def _synth_cases(presets, formats, prompts, profiles, threads) -> list[Case]:
    """The plain product over synthetic models."""
    return [
        Case(preset=p, fmt=f, prompt=pr, profile=pf, threads=t)
        for p in presets
        for f in formats
        for pf in profiles
        for t in threads
        for pr in prompts
    ]


def _relu2_cases(presets, profiles) -> list[Case]:
    """The relu² model (bitnet-b1.58) that llama.cpp runs as `bitnet` (SiLU): an expected divergence."""
    return [
        Case(preset=p, fmt=TQ2_0.NAME, prompt="hello", profile=pf, threads=2, arch=ARCH_BITNET_B158)
        for p in presets
        for pf in profiles
    ]


def user_cases(path: str, profiles=PROFILES, prompts=("hello", "mixed", "long"), i2s_layout: str = "x86") -> list[Case]:
    """A user's GGUF (BITNET_GGUF): every profile and prompt, 2 threads; an I2_S file is read in `i2s_layout`."""
    from bitnet_ref.gguf_reader import read_gguf

    with read_gguf(path) as g:
        types = {t.type for t in g.tensors.values()}
        arch = g.arch
    fmt = next(f.NAME for f in USER_FORMAT_PRIORITY if f.TYPE in types)
    if fmt == I2_S.NAME and i2s_layout == "arm":
        fmt = I2_S_ARM.NAME
    return [Case("user", fmt, pr, pf, 2, arch=arch, user_path=str(path)) for pf in profiles for pr in prompts]


def matrix(
    *, quick: bool = False, with_2b4t: bool = False, user_model: str | None = None, user_i2s_layout: str = "x86"
) -> list[Case]:
    """The default matrix, or the quick CI subset; BITNET_GGUF (or user_model) adds a user's model, whose I2_S
    weights are read in `user_i2s_layout`."""
    if quick:
        cases = _synth_cases(("tiny",), FORMATS, ("hello",), PROFILES, (2,))
        cases += _synth_cases(("tiny",), (TQ2_0.NAME,), ("mixed", "long"), PROFILES, (1,))
        cases += _relu2_cases(("tiny",), ("ggml",))
        cases += _synth_cases(("tiny",), LAYOUT_FORMATS, ("hello",), PROFILES, (2,))
    else:
        # the full product on tiny; small at 2 threads (plus 1 thread on TQ2_0): neither engine's numbers depend on
        # the thread count (docs/NUMERICS.md §4.1), so the second count only guards against races, cheaply
        cases = _synth_cases(("tiny",), FORMATS, tuple(PROMPTS), PROFILES, THREADS)
        cases += _synth_cases(("small",), FORMATS, tuple(PROMPTS), PROFILES, (2,))
        cases += _synth_cases(("small",), (TQ2_0.NAME,), tuple(PROMPTS), PROFILES, (1,))
        cases += _relu2_cases(SYNTH_PRESETS, PROFILES)
        cases += _synth_cases(SYNTH_PRESETS, LAYOUT_FORMATS, ("hello", "long"), PROFILES, (2,))
        if with_2b4t:
            cases += _synth_cases(("2b4t",), (TQ2_0.NAME, I2_S.NAME), ("hello", "long"), PROFILES, (2,))
    user_model = user_model or os.environ.get(USER_MODEL_ENV)
    if user_model:
        cases += user_cases(user_model, i2s_layout=user_i2s_layout)
    return cases


def on_device(cases: list[Case], device: str) -> list[Case]:
    """The cases bitnet_ref can run on `device` ("cpu" or "cuda"), moved there: the GPU runs the bitnet profile on
    TQ2_0, TQ1_0 and I2_S (x86) weights (bitnet_ref.cuda)."""
    if device == "cpu":
        return cases
    return [replace(c, device=device) for c in cases if c.profile == cuda.PROFILE and c.fmt in cuda.FORMATS]


def engine_model(case: Case) -> Path:
    """The GGUF bitnet_ref loads for a case (generated and cached on first use)."""
    if case.user_path:
        return Path(case.user_path)
    from bitnet_ref.synth import cached_model

    return cached_model(preset=case.preset, fmt=case.fmt, arch=case.arch, seed=case.seed)


def llama_model(case: Case, engine_path: Path) -> Path:
    """The GGUF llama.cpp loads: the engine's file, its TQ2_0 twin (I2_S, TL1, TL2), or an arch-`bitnet` relabelled
    copy."""
    from bitnet_ref.gguf_reader import read_gguf
    from bitnet_ref.layout import read_layout
    from bitnet_ref.synth import TWIN_OF, tq2_0_twin

    with read_gguf(engine_path) as g:
        needs_twin = any(t.type in TWIN_OF for t in g.tensors.values())
        arch = g.arch
        layout = read_layout(g, case.i2s_layout)
    if needs_twin:
        return tq2_0_twin(engine_path, layout)
    if arch != ARCH_BITNET:
        return relabelled_copy(engine_path)
    return engine_path


def relabelled_copy(src: Path) -> Path:
    """A byte-identical-tensor copy of src with arch `bitnet` (`<arch>.*` keys renamed), cached beside it."""
    from bitnet_ref.gguf_reader import read_gguf
    from bitnet_ref.gguf_writer import GGUFWriter

    out = src.with_name(src.name.removesuffix(".gguf") + RELABEL_SUFFIX)
    if out.exists() and out.stat().st_mtime_ns >= src.stat().st_mtime_ns:
        return out
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with read_gguf(src) as g, GGUFWriter(tmp, alignment=g.alignment) as w:
            for key, value in g.metadata.items():
                w.add_kv(_relabel_key(key, g.arch), ARCH_BITNET if key == KEY_ARCHITECTURE else value,
                         g.value_types[key])
            for name, t in g.tensors.items():
                w.add_tensor(name, t.shape, t.type)
            w.write_header()
            for name in g.tensors:
                w.write_tensor(name, g.tensor_bytes(name))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _relabel_key(key: str, arch: str) -> str:
    """`<arch>.x` -> `bitnet.x`; other keys unchanged."""
    return ARCH_BITNET + key[len(arch):] if key.startswith(arch + ".") else key


def long_prompt(tokenize: Callable[[str], list[int]], n_target: int) -> str:
    """Deterministic text whose token count is the largest not above n_target (sentences cycled)."""
    text, i = "", 0
    while True:
        candidate = (text + " " if text else "") + LONG_SENTENCES[i % len(LONG_SENTENCES)]
        if len(tokenize(candidate)) > n_target:
            return text
        text, i = candidate, i + 1


def long_target(n_ctx: int, n_greedy: int) -> int:
    """Token budget of the long prompt: LONG_FILL of the (capped) context, leaving room for the greedy tokens."""
    return int(LONG_FILL * min(n_ctx, LONG_CTX_CAP)) - n_greedy
