"""What bench measures: the engines, the cases (one model file each, and the file llama.cpp reads), the phases, the
settings of a run, and the identical inputs every engine gets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import roofline
from bitnet_ref import formats
from bitnet_ref.formats import F16, I2_S, IQ2_S, TL1, TL2, TQ1_0, TQ2_0
from bitnet_ref.synth import TWIN_OF

REF = "bitnet_ref"
LLAMA = "llama.cpp"
LLAMA_FA_OFF = "llama.cpp[fa=off]"
ENGINE_NAMES = (REF, LLAMA, LLAMA_FA_OFF)
PRESETS = ("tiny", "small", "2b4t")
FORMATS = (TQ2_0.NAME, TQ1_0.NAME, F16.NAME, IQ2_S.NAME, I2_S.NAME, TL1.NAME, TL2.NAME)
TWINNED = tuple(formats.get(t).NAME for t in TWIN_OF)  # bitnet.cpp's formats: llama.cpp reads the TQ2_0 twin
DEFAULT_MODELS = ("small", "2b4t")
DEFAULT_FORMATS = (TQ2_0.NAME, I2_S.NAME)
TTFT_TEXT = (
    "The quick brown fox jumps over the lazy dog. A ternary network stores each weight as minus one, zero or one, "
    "so a matrix product becomes additions and subtractions, and the speed of decoding is set by how fast the "
    "machine can stream the weights from memory. "
)


@dataclass(frozen=True)
class EngineSpec:
    """One engine configuration: its display name, its backend, llama.cpp's flash-attention setting and
    bitnet_ref's numerics profile."""

    name: str
    backend: str  # "bitnet_ref" | "llama.cpp"
    flash_attn: str | None = None  # llama.cpp: "auto" (its default, fastest) | "off" (the crossval configuration)
    numerics: str | None = None  # bitnet_ref: a profile of bitnet_ref.numerics.PROFILES; None for llama.cpp
    device: str = "cpu"  # bitnet_ref: "cpu" or "cuda" (bitnet_ref.device); llama.cpp runs on the CPU


ENGINES = {
    REF: EngineSpec(REF, REF),
    LLAMA: EngineSpec(LLAMA, LLAMA, "auto"),
    LLAMA_FA_OFF: EngineSpec(LLAMA_FA_OFF, LLAMA, "off"),
}


def is_ref(name: str) -> bool:
    """Whether an engine name of the records is bitnet_ref: 'bitnet_ref', or 'bitnet_ref[<profile>]' in a run that
    measured several numerics profiles."""
    return name == REF or (name.startswith(REF + "[") and name.endswith("]"))


def ref_engines(profiles: Sequence[str], device: str = "cpu") -> list[EngineSpec]:
    """bitnet_ref once per numerics profile: named 'bitnet_ref' when there is one on the CPU (old records keep their
    name), 'bitnet_ref[<profile>]' when there are several, 'bitnet_ref[<profile>@<device>]' off the CPU."""
    if device != "cpu":
        return [EngineSpec(f"{REF}[{p}@{device}]", REF, numerics=p, device=device) for p in profiles]
    if len(profiles) == 1:
        return [EngineSpec(REF, REF, numerics=profiles[0])]
    return [EngineSpec(f"{REF}[{p}]", REF, numerics=p) for p in profiles]


def engine_spec(name: str) -> EngineSpec:
    """The EngineSpec behind an engine name of the records ('bitnet_ref[<profile>]' or
    'bitnet_ref[<profile>@<device>]' carries its profile and device)."""
    if name not in ENGINES and is_ref(name):
        profile, _, device = name[len(REF) + 1 : -1].partition("@")
        return EngineSpec(name, REF, numerics=profile, device=device or "cpu")
    return ENGINES[name]


@dataclass(frozen=True)
class Phase:
    """One timed phase: prefill of n tokens, decode of n steps, or time to first token of a text prompt."""

    name: str
    kind: str  # "prefill" | "decode" | "ttft"
    n: int

    @property
    def unit(self) -> str:
        """tok/s for throughput phases, ms for time to first token."""
        return "ms" if self.kind == "ttft" else "tok/s"


@dataclass(frozen=True)
class Case:
    """One model file: preset (or 'user') and format, the file bitnet_ref reads and the one llama.cpp reads."""

    model: str
    fmt: str
    path: Path
    llama_path: Path

    @property
    def name(self) -> str:
        """'<model>/<fmt>'."""
        return f"{self.model}/{self.fmt}"

    def file_for(self, engine: EngineSpec) -> Path:
        """The GGUF an engine reads."""
        return self.path if engine.backend == REF else self.llama_path

    def file_note(self, engine: EngineSpec) -> str:
        """'same', or which twin llama.cpp reads instead (I2_S, TL1, TL2: the lossless TQ2_0 twin)."""
        return "same" if self.file_for(engine) == self.path else f"TQ2_0 twin of the {self.fmt.upper()} file"


@dataclass(frozen=True)
class Settings:
    """Everything a run measures with; written into run.json."""

    threads: tuple[int, ...] = (2,)
    reps: int = 5
    prompt_tokens: tuple[int, ...] = (128, 512)
    gen_tokens: int = 128
    engines: tuple[str, ...] = ENGINE_NAMES
    numerics: tuple[str, ...] = ("ggml",)  # bitnet_ref runs once per profile, as engines of their own
    device: str = "cpu"  # where bitnet_ref runs (a resolved bitnet_ref.device name)
    extra_bufts: bool = True  # llama.cpp's extra buffer types (CPU_REPACK, AMX): on, as people run it
    ref_threads: int | None = None  # override bitnet_ref's threads only (e.g. to plant a slowdown)
    seed: int = 0
    bandwidth_bytes: int = roofline.BUFFER_BYTES

    def engine_specs(self) -> list[EngineSpec]:
        """The engines in the order they alternate: each of `engines`, bitnet_ref expanded to one per profile."""
        return [s for name in self.engines
                for s in (ref_engines(self.numerics, self.device) if name == REF else [ENGINES[name]])]

    def steps(self, n_phases: int) -> int:
        """Steps of one case at one thread count: each engine's load, then its warm-up and repetitions of every
        phase."""
        return len(self.engine_specs()) * (1 + (self.reps + 1) * n_phases)

    def phases(self, n_ctx: int) -> list[Phase]:
        """The phases, named by their token counts once capped to the model's context (tiny: pp512 -> pp256)."""
        lengths = dict.fromkeys(min(n, n_ctx) for n in self.prompt_tokens)
        out = [Phase(f"pp{n}", "prefill", n) for n in lengths]
        gen = min(self.gen_tokens, n_ctx)
        return out + [Phase(f"tg{gen}", "decode", gen), Phase("ttft", "ttft", 0)]


def _fmt_of(path: Path) -> str:
    """The weight format of a user's GGUF: its most common ternary matrix type, else its most common matrix type."""
    from bitnet_ref.gguf_reader import read_gguf

    with read_gguf(path) as gguf:
        matrices = [t.type for t in gguf.tensors.values() if len(t.shape) > 1]
        types = [t for t in matrices if t in formats.TERNARY_TYPES] or matrices
    return formats.get(max(set(types), key=types.count)).NAME


def _case(model: str, fmt: str, path: Path) -> Case:
    """A case; an I2_S, TL1 or TL2 file is read by llama.cpp through its lossless TQ2_0 twin."""
    if fmt in TWINNED:
        from bitnet_ref.synth import tq2_0_twin

        return Case(model, fmt, path, Path(tq2_0_twin(path)))
    return Case(model, fmt, path, path)


def build_cases(models: Sequence[str], fmts: Sequence[str], user_gguf: str | None = None) -> list[Case]:
    """The cases to measure: the user's GGUF (BITNET_GGUF) alone, else every preset × format, built once and cached."""
    if user_gguf:
        path = Path(user_gguf)
        return [_case("user", _fmt_of(path), path)]
    from bitnet_ref.synth import cached_model

    cases = []
    for model in models:
        for fmt in fmts:
            cases.append(_case(model, fmt, Path(cached_model(preset=model, fmt=fmt, arch="bitnet", seed=0))))
    return cases


def config(path: Path) -> object:
    """ModelConfig of a GGUF (n_ctx, n_vocab, bos_id)."""
    from bitnet_ref.config import ModelConfig
    from bitnet_ref.gguf_reader import read_gguf

    with read_gguf(path) as gguf:
        return ModelConfig.from_gguf(gguf)


def case_info(case: Case) -> dict:
    """A case for run.json: its files (path, bytes, sha256) and the model's configuration."""
    from bitnet_ref.files import model_identity

    paths = dict.fromkeys((case.path, case.llama_path))
    files = {str(p): model_identity(p) for p in paths}
    return {"case": case.name, "path": str(case.path), "llama_path": str(case.llama_path), "files": files,
            "config": config(case.path).describe()}


def requests(phases: Sequence[Phase], n_vocab: int, bos: int | None, seed: int) -> dict[str, dict]:
    """The identical inputs every engine gets: seeded random prompt ids after BOS, and the TTFT text."""
    rng = np.random.default_rng(seed)
    longest = max([p.n for p in phases if p.kind != "ttft"], default=1)
    ids = [int(bos if bos is not None else 0)] + [int(t) for t in rng.integers(0, n_vocab, longest - 1)]
    out = {}
    for p in phases:
        if p.kind == "ttft":
            out[p.name] = {"kind": "ttft", "text": TTFT_TEXT}
        else:
            out[p.name] = {"kind": p.kind, "tokens": ids[: p.n], "n": p.n}
    return out


def context_for(phases: Sequence[Phase], n_ctx_train: int) -> int:
    """The KV length both engines allocate: the longest phase rounded up to 256 (TTFT prompts are short),
    at most the model's training context."""
    longest = max(max((p.n for p in phases), default=1), 256)
    return min(-(-longest // 256) * 256, n_ctx_train)
