"""Run in a child process with NUMBA_ENABLE_CUDASIM=1 by tests/test_cuda.py: the CUDA kernels under numba's simulator
next to their CPU twins, results written to an npz (pairs `<name>.gpu` / `<name>.cpu`) for the parent to assert on.

    python tests/cuda_sim_child.py kernels OUT.npz
    python tests/cuda_sim_child.py model MODEL.gguf OUT.npz   # prompt logits and greedy tokens of both engines
"""

from __future__ import annotations

import os
import sys

import numpy as np

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run by tests/test_cuda.py with NUMBA_ENABLE_CUDASIM=1"

from numba import cuda  # noqa: E402

from bitnet_ref import formats  # noqa: E402
from bitnet_ref.cuda import arith  # noqa: E402
from bitnet_ref.cuda import kernels as K  # noqa: E402
from bitnet_ref.kernels import activation, actquant, attention, dense, norm, ternary  # noqa: E402

PROMPT = np.array([1, 17, 42, 99], np.int32)
GREEDY_STEPS = 2


def _ternary_weight(fmt, M, Kd, rng):
    """Packed bytes of a random ternary (M, Kd) matrix in `fmt`, all three codes and all-zero rows included."""
    t = rng.integers(-1, 2, size=(M, Kd)).astype(np.int8)
    t[0] = 0
    t[1] = 1
    if fmt is formats.I2_S:
        return fmt.encode_ternary(t, 0.0625)
    return fmt.encode(t.astype(np.float32) * np.float32(0.0625))


def kernels(out: str) -> None:
    """Each kernel on seeded random input against the CPU engine's kernel (and numpy where the CPU has no twin)."""
    rng = np.random.default_rng(7)
    res: dict[str, np.ndarray] = {}
    T, E = 3, 256
    x = rng.normal(size=(T, E)).astype(np.float32)
    x[1] = 0  # an all-zero row: s = 127e5
    # per-token int8
    q, s, a = np.zeros((T, E), np.int8), np.zeros(T, np.float32), np.zeros(T, np.int32)
    actquant.quantize_i8_rows(x, q, s, a)
    dq, ds, da = cuda.device_array((T, E), np.int8), cuda.device_array(T, np.float32), cuda.device_array(T, np.int32)
    K.launch(K.quantize_i8, T, cuda.to_device(x), dq, ds, da)
    for name, cpu, gpu in (("q", q, dq), ("s", s, ds), ("act_sum", a, da)):
        res[f"quantize_{name}.cpu"], res[f"quantize_{name}.gpu"] = cpu, gpu.copy_to_host()
    # ternary matmuls on the packed bytes
    M = 6
    for fmt, cpu_kernel, gpu_kernel in ((formats.TQ2_0, ternary.matmul_tq2_0_i8, K.matmul_tq2_0),
                                        (formats.TQ1_0, ternary.matmul_tq1_0_i8, K.matmul_tq1_0),
                                        (formats.I2_S, ternary.matmul_i2s_i8, K.matmul_i2s)):
        w = _ternary_weight(fmt, M, E, rng)
        cpu = np.zeros((T, M), np.float32)
        cpu_kernel(w, M, E, q, s, a, cpu)
        gpu = cuda.device_array((T, M), np.float32)
        if fmt is formats.I2_S:
            scale = fmt.scales(w, (E, M))[0]
            K.launch(gpu_kernel, T * M, cuda.to_device(w), M, E, cuda.to_device(q), cuda.to_device(s),
                     cuda.to_device(a), scale, gpu)
        else:
            K.launch(gpu_kernel, T * M, cuda.to_device(w), M, E, cuda.to_device(q), cuda.to_device(s), gpu)
        wf = fmt.decode(w, (E, M)).reshape(M, E)  # numpy twin: Σ (T·ws)·q in float64, then / s
        res[f"matmul_{fmt.NAME}.cpu"], res[f"matmul_{fmt.NAME}.gpu"] = cpu, gpu.copy_to_host()
        res[f"matmul_{fmt.NAME}.numpy"] = (q.astype(np.float64) @ wf.astype(np.float64).T) / s[:, None]
    # RMSNorm (in place, as the FFN sub-norm runs)
    w_norm = (1 + 0.1 * rng.normal(size=E)).astype(np.float32)
    cpu = np.zeros_like(x)
    norm.rmsnorm(x, w_norm, 1e-5, False, cpu)
    dx = cuda.to_device(x)
    K.launch(K.rmsnorm, T, dx, cuda.to_device(w_norm), np.float32(1e-5), dx)
    res["rmsnorm.cpu"], res["rmsnorm.gpu"] = cpu, dx.copy_to_host()
    # gated activations and the residual add
    g, u = (rng.normal(size=(T, E)) * 4).astype(np.float32), rng.normal(size=(T, E)).astype(np.float32)
    for name, cpu_fn, gpu_fn in (("swiglu", lambda o: activation.swiglu(g, u, 8, False, o), K.swiglu),
                                 ("relu2", lambda o: activation.relu2_glu(g, u, o), K.relu2_glu),
                                 ("add", lambda o: activation.add(g, u, o), K.add_rows)):
        cpu = np.zeros_like(g)
        cpu_fn(cpu)
        gpu = cuda.device_array_like(g)
        K.launch(gpu_fn, T * E, cuda.to_device(g), cuda.to_device(u), gpu)
        res[f"{name}.cpu"], res[f"{name}.gpu"] = cpu, gpu.copy_to_host()
    # every f16 bit pattern
    bits = np.arange(1 << 16, dtype=np.uint16)
    res["f16.cpu"] = bits.view(np.float16).astype(np.float32)
    res["f16.gpu"] = np.array([K.f16_bits_to_f32(b) for b in bits], np.float32)
    # the float head, f16 and f32, with leftovers past the last full chunk of 4·lanes (K = 76: 8 + 4 past 64)
    Kh, Mh = 76, 5
    xh = rng.normal(size=(2, Kh)).astype(np.float32)
    for lanes in (8, 16):
        for name, wh, cpu_fn in (("f16", rng.normal(size=Mh * Kh).astype(np.float16).view(np.uint16), dense.matmul_f16),
                                 ("f32", rng.normal(size=Mh * Kh).astype(np.float32), dense.matmul_f32)):
            cpu = np.zeros((2, Mh), np.float32)
            cpu_fn(wh, Mh, Kh, xh, False, lanes, cpu)
            gpu = cuda.device_array((2, Mh), np.float32)
            K.launch(K.head, 2 * Mh, cuda.to_device(wh), name == "f16", Mh, Kh, cuda.to_device(xh), lanes, gpu)
            res[f"head_{name}_{lanes}.cpu"], res[f"head_{name}_{lanes}.gpu"] = cpu, gpu.copy_to_host()
    res.update(_attention(rng))
    res["fma.gpu"] = np.array([arith.fma(np.float32(1 + 2**-12), np.float32(1 + 2**-12), np.float32(-1))])
    res["fma.cpu"] = np.array([np.float32(2**-11 + 2**-24)], np.float32)  # exact; two roundings would lose 2**-24
    np.savez(out, **res)


def _attention(rng) -> dict[str, np.ndarray]:
    """Causal GQA attention of 3 new queries after 2 cached positions: the three kernels against attention.attend."""
    n_head, n_kv, hd, n_ctx, pos0, T = 4, 2, 16, 8, 2, 3
    s = attention.AttentionSettings(n_head, n_kv, hd, np.float32(0.25), False, False, 8, False, False, False, False,
                                    True)
    k_shape, v_shape = attention.kv_layout(n_ctx, n_kv * hd, True)
    kc, vc = np.zeros(k_shape, np.float32), np.zeros(v_shape, np.float32)
    k_all = rng.normal(size=(pos0 + T, n_kv * hd)).astype(np.float32)
    v_all = rng.normal(size=(pos0 + T, n_kv * hd)).astype(np.float32)
    attention.store_kv(k_all, v_all, 0, kc, vc, True)
    q = rng.normal(size=(T, n_head * hd)).astype(np.float32)
    cpu = np.zeros((T, n_head * hd), np.float32)
    attention.attend(q, kc, vc, pos0, s, cpu)
    dk, dv = cuda.to_device(np.zeros((n_ctx, n_kv * hd), np.float32)), cuda.to_device(np.zeros((n_ctx, n_kv * hd),
                                                                                                 np.float32))
    K.launch(K.store_kv, (pos0 + T) * n_kv * hd, cuda.to_device(k_all), cuda.to_device(v_all), 0, dk, dv)
    p = cuda.to_device(np.zeros((T, n_head, n_ctx), np.float32))
    dq = cuda.to_device(q)
    K.launch(K.attn_scores, T * n_head * (pos0 + T), dq, dk, pos0, n_head // n_kv, hd, np.float32(0.25), p)
    K.launch(K.attn_softmax, T * n_head, p, T, pos0)
    gpu = cuda.device_array((T, n_head * hd), np.float32)
    K.launch(K.attn_values, T * n_head * hd, p, dv, pos0, n_head // n_kv, hd, gpu)
    return {"attention.cpu": cpu, "attention.gpu": gpu.copy_to_host()}


def model(path: str, out: str) -> None:
    """Prompt logits (all positions) and greedy continuations of the CPU and the CUDA engine on one file."""
    from bitnet_ref.model import load_model

    res = {}
    for dev in ("cpu", "cuda"):
        m = load_model(path, numerics="bitnet", n_threads=1, device=dev)
        logits = m.forward(PROMPT, 0, all_logits=True)
        tokens = [int(logits[-1].argmax())]
        for i in range(GREEDY_STEPS):
            step = m.forward(np.array([tokens[-1]], np.int32), len(PROMPT) + i, all_logits=False)
            tokens.append(int(step[-1].argmax()))
        res[f"logits.{dev}"], res[f"greedy.{dev}"] = logits, np.array(tokens)
        res[f"describe_device.{dev}"] = np.array(str(m.describe()["device"]))
    np.savez(out, **res)


if __name__ == "__main__":
    if sys.argv[1] == "kernels":
        kernels(sys.argv[2])
    else:
        model(sys.argv[2], sys.argv[3])
