"""One engine's process: `TimedEngine` loads the engine and times phases inside it (crossval.isolated hosts it),
`Worker` is the parent's handle on it."""

from __future__ import annotations

import importlib
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.cases import LLAMA, REF, EngineSpec
from crossval.isolated import ChildError, Isolated

READY_TIMEOUT_S = 900.0  # loading a 2B model and compiling every kernel cold on 2 cores
STEP_TIMEOUT_S = 900.0
PROBE_TIMEOUT_S = 120.0  # importing llama_cpp to read its system-info line
BACKEND_MODULES = {  # imported (and timed) before the model loads
    REF: ("crossval.backends", "bitnet_ref.model"),
    LLAMA: ("crossval.llama_cpp_backend",),
}
# the host's CPU features bitnet_ref's code reads: its intrinsics (f16c, avx2, avx512vnni + avx512vl) and the SIMD
# level numerics.host_simd picks for the profiles (avx512f, avx512dq, avx512bf16)
CPU_FEATURES = ("f16c", "avx2", "avx512f", "avx512dq", "avx512vl", "avx512vnni", "avx512bf16")


def _open_backend(engine: EngineSpec, path: str, n_threads: int, n_ctx: int, extra_bufts: bool) -> object:
    """Load one engine through the crossval backends, both with a KV cache of n_ctx positions."""
    if engine.backend == REF:
        from crossval.backends import BitnetRefBackend

        return BitnetRefBackend(path, numerics=engine.numerics, n_threads=n_threads, n_ctx=n_ctx, device=engine.device)
    from crossval.llama_cpp_backend import LlamaCppBackend

    backend = LlamaCppBackend(path, n_threads=n_threads, n_ctx=n_ctx, flash_attn=False, extra_bufts=extra_bufts,
                              echo_log=True)
    _timing_context(backend, n_ctx, engine.flash_attn)
    return backend


def _timing_context(backend: object, n_ctx: int, flash_attn: str | None) -> None:
    """Swap the crossval backend's context for a timing one: no eval callback (it costs a Python call per graph
    node), perf counters on; flash attention auto with llama.cpp's default batch sizes, or the crossval
    configuration (flash attention off, one ubatch per prompt). The weights' buffer types were read on the first
    decode of the crossval context."""
    import llama_cpp.llama_cpp as L

    cp = L.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_threads = cp.n_threads_batch = backend.n_threads
    cp.no_perf = False
    if flash_attn == "off":
        cp.n_batch = cp.n_ubatch = n_ctx
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    else:
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_AUTO
    ctx = L.llama_init_from_model(backend.model, cp)
    if not ctx:
        raise EngineError(f"llama.cpp: no timing context for {backend.path}")
    L.llama_free(backend.ctx)
    backend.ctx = ctx


def _llama_perf(backend: object, reset: bool) -> float:
    """llama.cpp's own time for the evals since the last reset (prompt + generation), in seconds."""
    import llama_cpp.llama_cpp as L

    if reset:
        L.llama_perf_context_reset(backend.ctx)
        return 0.0
    data = L.llama_perf_context(backend.ctx)
    return (data.t_p_eval_ms + data.t_eval_ms) / 1e3


def kernel_host() -> dict:
    """What decides bitnet_ref's kernels on this host: the ISA they run, the ISAs the host could run, the
    $BITNET_KERNEL_ISA override, and the CPU features its code generation reads (numba's target)."""
    from bitnet_ref.kernels import ternary
    from bitnet_ref.kernels.isa import ISA_ENV, available_isas, host_features

    have = host_features()
    return {"kernel_isa": ternary.kernel_isa(), "kernel_isas_available": list(available_isas()),
            "kernel_isa_env": os.environ.get(ISA_ENV), "cpu_features": {f: f in have for f in CPU_FEATURES}}


def _describe(backend: object, engine: EngineSpec) -> dict:
    """The backend's description with bench's engine configuration; for bitnet_ref its numerics profile and kernel
    ISA with the host's CPU features, for llama.cpp corrected for the timing context bench put in place and its
    build parsed from the system-info line."""
    desc = {**backend.describe(), "engine": asdict(engine)}
    if engine.backend == REF:
        desc.update({"numerics_profile": engine.numerics, **kernel_host()})
    else:
        from crossval import llama_cpp_backend as LB
        from crossval.build import ReferenceBuild

        log = getattr(getattr(LB, "_Log", None), "lines", [])  # llama.cpp's log says what "auto" resolved to
        resolved = [line.strip() for line in log if "Flash Attention" in line]
        desc.update({"flash_attn_type": engine.flash_attn, "flash_attn_resolved": resolved[-1] if resolved else None,
                     "eval_callback": False, "perf_counters": True,
                     "build": ReferenceBuild.from_system_info(desc["system_info"]).describe()})
    return desc


def _proc_mb(field_name: str) -> float:
    """A memory figure of this process from /proc/self/status in MB (VmRSS now, VmHWM peak)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _compile_timer() -> object:
    """A numba listener that adds up the time of every JIT compilation from now on (cache loads excluded)."""
    from numba.core import event

    timer = event.TimingListener()
    event.register("numba:compile", timer)
    return timer


def _numba_stats(timer: object) -> dict:
    """Seconds numba spent compiling, and how many bitnet_ref functions were compiled vs loaded from its cache."""
    import sys

    from numba.core.registry import CPUDispatcher

    compiled = cached = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("bitnet_ref") or module is None:
            continue
        for obj in vars(module).values():
            if isinstance(obj, CPUDispatcher) and obj.signatures:
                cached += sum(obj.stats.cache_hits.values())
                compiled += sum(obj.stats.cache_misses.values())
    seconds = timer.duration if timer.done else 0.0
    return {"compile_s": seconds, "kernels_compiled": compiled, "kernels_from_cache": cached}


def _run_phase(backend: object, msg: dict, is_llama: bool) -> dict:
    """Time one phase on a loaded backend. greedy(tokens, k) makes exactly k forward passes from an empty cache, the
    first over all of `tokens` (logits of the last position only), the rest one token each."""
    kind = msg["kind"]
    if is_llama:
        _llama_perf(backend, reset=True)
    t0 = time.perf_counter()
    if kind == "prefill":
        out, _ = backend.greedy(msg["tokens"], 1)
        n = len(msg["tokens"])
    elif kind == "decode":
        out, _ = backend.greedy(msg["tokens"][:1], msg["n"])  # n single-token forward passes
        n = msg["n"]
    else:
        ids = backend.tokenize(msg["text"], True)
        out, _ = backend.greedy(ids, 1)  # text -> ids -> prefill -> the first token
        n = len(ids)
    wall = time.perf_counter() - t0
    if len(out) != (msg["n"] if kind == "decode" else 1):
        raise EngineError(f"greedy returned {len(out)} tokens for a {kind} phase")
    return {"wall_s": wall, "n": n, "counter_s": _llama_perf(backend, reset=False) if is_llama else float("nan")}


class TimedEngine:
    """One engine loaded for timing, inside its own process (crossval.isolated runs it): the parent calls `ready`,
    then `run` per phase, then `final`."""

    def __init__(self, engine: EngineSpec, path: str, n_threads: int, n_ctx: int, extra_bufts: bool):
        self.timer = _compile_timer() if engine.backend == REF else None
        self.is_llama = engine.backend == LLAMA
        t0 = time.perf_counter()
        for module in BACKEND_MODULES[engine.backend]:
            importlib.import_module(module)
        t1 = time.perf_counter()
        self.backend = _open_backend(engine, path, n_threads, n_ctx, extra_bufts)
        self.info = {"import_s": t1 - t0, "load_s": time.perf_counter() - t1, "rss_after_load_mb": _proc_mb("VmRSS"),
                     "describe": _describe(self.backend, engine)}

    def ready(self) -> dict:
        """Import and load times, RSS after load, the engine's description."""
        return self.info

    def run(self, msg: dict) -> dict:
        """Time one phase."""
        return _run_phase(self.backend, msg, self.is_llama)

    def final(self) -> dict:
        """Peak RSS and numba's compile/cache figures."""
        stats = _numba_stats(self.timer) if self.timer is not None else {}
        return {"peak_rss_mb": _proc_mb("VmHWM"), **stats}


class EngineError(RuntimeError):
    """An engine process failed to load, crashed, or timed out."""


@dataclass
class Worker:
    """The parent's handle on one engine process."""

    engine: EngineSpec
    threads: int
    child: Isolated
    ready: dict = field(default_factory=dict)

    @classmethod
    def start(cls, engine: EngineSpec, path: Path, threads: int, n_ctx: int, extra_bufts: bool) -> Worker:
        """Spawn the engine's process and wait until its model is loaded."""
        kwargs = {"engine": engine, "path": str(path), "n_threads": threads, "n_ctx": n_ctx, "extra_bufts": extra_bufts}
        try:
            child = Isolated("bench.worker:TimedEngine", kwargs, name=engine.name, timeout=READY_TIMEOUT_S)
            worker = cls(engine, threads, child)
            worker.ready = worker._call("ready")
        except ChildError as err:
            raise EngineError(f"{engine.name} could not load {path}: {err}\n{err.tail}") from err
        return worker

    def _call(self, method: str, *args, timeout: float = STEP_TIMEOUT_S):
        """A call into the engine's process; its crash, hang or error is an EngineError."""
        try:
            return self.child.call(method, *args, timeout=timeout)
        except ChildError as err:
            raise EngineError(f"{self.engine.name} {method}: {err}\n{err.tail}") from err

    def run(self, request: dict) -> dict:
        """Run one phase in the engine's process and return its timing."""
        return self._call("run", request)

    def stop(self) -> dict:
        """Ask for the final figures (peak RSS, numba cache use) and end the process."""
        try:
            return self._call("final", timeout=60.0)
        finally:
            self.close()

    def close(self) -> None:
        """End the engine's process."""
        self.child.close()


class SystemInfo:
    """llama.cpp's system-info line, read in a process of its own like every llama.cpp call of bench."""

    def line(self) -> str:
        """`llama_print_system_info()`: the CPU features llama.cpp was compiled for."""
        from crossval.llama_cpp_backend import L

        return L.llama_print_system_info().decode().strip()


def llama_system_info() -> str:
    """llama.cpp's system-info line, from a short-lived child process; EngineError when llama.cpp cannot load."""
    try:
        child = Isolated("bench.worker:SystemInfo", {}, name="llama.cpp system info", timeout=PROBE_TIMEOUT_S)
        try:
            return child.call("line")
        finally:
            child.close()
    except ChildError as err:
        raise EngineError(f"{err}\n{err.tail}") from err
