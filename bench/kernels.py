"""Micro-benchmark of the ternary kernels on the 2B-4T shapes: weight GB/s per format, profile, ISA and thread count.

    python -m bench.kernels [--reps 5] [--threads 1 2] [--prefill 8 128] [--formats tq2_0 i2_s] [--clock cpu]

Decode (T = 1) reads each weight matrix from DRAM: every call uses the next of enough copies of the weights to
overflow the caches. GB/s = packed weight bytes / time per call (median over reps; ISAs interleaved A B A B, since
this machine kind's bandwidth drifts; the TQ int8 kernels get their one-run flags, computed once per copy as the
engine does at load), and as a % of the bus: the streaming read bandwidth measured once per thread
count before the table (bench.roofline). Prefill reports GOP/s (2·M·K·T / time). Not a test: numbers vary with load.
`--clock cpu` times with process CPU time divided by the thread count instead of wall time: on a shared, loaded
machine it estimates what the kernel does when it has the cores (it cannot show poor thread scaling).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numba
import numpy as np
from rich.console import Console

from bench import roofline
from bitnet_ref import formats
from bitnet_ref.formats import I2_S, TQ1_0, TQ2_0
from bitnet_ref.kernels import actquant, ternary
from bitnet_ref.kernels.isa import available_isas, isa_id

SHAPES = ((2560, 2560), (640, 2560), (6912, 2560), (2560, 6912))  # (M, K): q/o, k/v, gate/up, down of 2B-4T
STREAM_BYTES = 256 << 20  # copies of one matrix add up to this much, far beyond L3
KERNELS = {  # (format, profile) -> kernel
    (TQ2_0.NAME, "q8k"): ternary.matmul_tq2_0_q8k,
    (TQ1_0.NAME, "q8k"): ternary.matmul_tq1_0_q8k,
    (TQ2_0.NAME, "i8"): ternary.matmul_tq2_0_i8,
    (TQ1_0.NAME, "i8"): ternary.matmul_tq1_0_i8,
    (I2_S.NAME, "q8k"): ternary.matmul_i2s_q8k,
    (I2_S.NAME, "i8"): ternary.matmul_i2s_i8,
}


def weight_copies(fmt: str, M: int, K: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Read-only random weight bytes (valid f16 d / f32 scale), enough copies to stream from DRAM."""
    n = formats.by_name(fmt).nbytes((K, M))
    base = rng.integers(0, 256, n, dtype=np.uint8)
    copies = []
    for i in range(max(2, STREAM_BYTES // n)):
        c = np.roll(base, i)
        formats.by_name(fmt).stored_scales(c)[:] = 0.5  # every block's f16 d (one per tensor, as models have) or I2_S's
        c.flags.writeable = False
        copies.append(c)
    return copies


def activations(act: str, T: int, K: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Quantized activations of random float rows for profile `act`."""
    x = rng.standard_normal((T, K)).astype(np.float32)
    if act == "q8k":
        qs, d, bs = np.empty((T, K), np.int8), np.empty((T, K // 256), np.float32), np.empty((T, K // 16), np.int16)
        actquant.quantize_q8_k(x, qs, d, bs)
        return qs, d, bs
    q, s, a = np.empty((T, K), np.int8), np.empty(T, np.float32), np.empty(T, np.int32)
    actquant.quantize_i8_rows(x, q, s, a)
    return q, s, a


def load_time_args(fmt: str, act: str, copies: list[np.ndarray], M: int, K: int) -> list[tuple]:
    """Per copy, the arguments the engine computes once at load and passes after `isa`: the one-run flags of TQ rows
    for the int8 kernels (model._linear), nothing otherwise."""
    if act == "i8" and fmt in (TQ2_0.NAME, TQ1_0.NAME):
        return [(ternary.one_run_rows(fmt, c, M, K),) for c in copies]
    return [() for _ in copies]


def time_calls(fn, copies, extra, M, K, acts, out, isa, calls: int, cpu: bool) -> float:
    """Seconds per call, cycling through the weight copies and their load-time arguments `extra` (CPU seconds per
    thread when `cpu`)."""
    clock = time.process_time if cpu else time.perf_counter
    fn(copies[0], M, K, *acts, out, isa, *extra[0])
    t0 = clock()
    for i in range(calls):
        fn(copies[i % len(copies)], M, K, *acts, out, isa, *extra[i % len(copies)])
    sec = (clock() - t0) / calls
    return sec / numba.get_num_threads() if cpu else sec


def bench_shape(fmt, act, M, K, T, isas, reps, rng, cpu=False) -> dict[str, float]:
    """Median seconds per call of each ISA (interleaved) for one shape and token count."""
    fn = KERNELS[(fmt, act)]
    copies = weight_copies(fmt, M, K, rng)
    extra = load_time_args(fmt, act, copies, M, K)
    acts = activations(act, T, K, rng)
    out = np.empty((T, M), np.float32)
    calls = max(3, min(len(copies), int(2e8 / (M * K * T))))
    times: dict[str, list[float]] = {name: [] for name in isas}
    for _ in range(reps):
        for name in isas:
            times[name].append(time_calls(fn, copies, extra, M, K, acts, out, isa_id(name), calls, cpu))
    return {name: float(np.median(v)) for name, v in times.items()}


def bus_bandwidth(threads: Sequence[int]) -> dict[int, float]:
    """Median streaming read bandwidth in GB/s at each thread count, measured once each."""
    return {nt: roofline.measure_bandwidth(nt, STREAM_BYTES).median for nt in threads}


def bus_line(bus: dict[int, float]) -> str:
    """The header line naming the bus bandwidth at each thread count."""
    return "bus (streaming read, median): " + ", ".join(f"{nt}T {gbps:.1f} GB/s" for nt, gbps in bus.items())


def decode_header(isas: Sequence[str]) -> str:
    """Column titles of the decode table: each ISA's GB/s, then that as a % of the bus."""
    return f"{'format':8} {'act':4} {'M x K':>11} {'thr':>3} " + " ".join(f"{n:>10} {'%bus':>5}" for n in isas)


def decode_row(fmt: str, act: str, M: int, K: int, threads: int, gbs: Sequence[float], bus_gbps: float) -> str:
    """One row of the decode table: each ISA's weight GB/s and its % of the bus bandwidth at this thread count."""
    cells = " ".join(f"{g:10.1f} {100 * g / bus_gbps:4.0f}%" for g in gbs)
    return f"{fmt:8} {act:4} {M:>5}x{K:<5} {threads:>3} " + cells


def main(argv: list[str] | None = None) -> int:
    """Print decode GB/s and prefill GOP/s tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--prefill", type=int, nargs="*", default=[8, 128], help="token counts for the prefill table")
    p.add_argument("--formats", nargs="+", default=[TQ2_0.NAME, TQ1_0.NAME, I2_S.NAME])
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="wall time, or CPU time per thread")
    args = p.parse_args(argv)
    isas = list(available_isas())
    rng = np.random.default_rng(0)
    cpu = args.clock == "cpu"
    say = Console(highlight=False).out
    say(f"kernel_isa() = {ternary.kernel_isa()}; ISAs timed: {', '.join(isas)}; numba {numba.__version__}")
    say(f"clock: {args.clock}{' (process CPU time / threads)' if cpu else ''}")
    bus = bus_bandwidth(args.threads)
    say(bus_line(bus))
    say(f"decode (T = 1), weight GB/s, median of {args.reps}; %bus = GB/s / bus at that thread count")
    say(decode_header(isas))
    for fmt, act in KERNELS:
        if fmt not in args.formats:
            continue
        for M, K in SHAPES:
            for nt in args.threads:
                numba.set_num_threads(nt)
                sec = bench_shape(fmt, act, M, K, 1, isas, args.reps, rng, cpu)
                gbs = [ternary.weight_nbytes(fmt, M, K) / sec[n] / 1e9 for n in isas]
                say(decode_row(fmt, act, M, K, nt, gbs, bus[nt]))
    if args.prefill:
        say("prefill, GOP/s (2·M·K·T per call), 2560 x 6912")
        for fmt, act in KERNELS:
            if fmt not in args.formats:
                continue
            for T in args.prefill:
                for nt in args.threads:
                    numba.set_num_threads(nt)
                    sec = bench_shape(fmt, act, 2560, 6912, T, isas, max(1, args.reps // 2), rng, cpu)
                    gops = [2 * 2560 * 6912 * T / sec[n] / 1e9 for n in isas]
                    say(f"{fmt:8} {act:4} T={T:<4} thr {nt} " + " ".join(f"{g:10.1f}" for g in gops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
