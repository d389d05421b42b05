"""bitnet_ref on CUDA, tested without a GPU: the kernels run under numba's CUDA simulator in child processes
(tests/cuda_sim_child.py, NUMBA_ENABLE_CUDASIM=1 in their environment only, so this process and every other test keep
the real numba.cuda) and are compared with the CPU engine; device selection is tested here on this GPU-less host.

The children start together when the module's first simulator test runs (the simulator runs each CUDA thread as a
Python thread; together they take about a minute of CPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bitnet_ref import synth
from bitnet_ref.cuda import check_numerics
from bitnet_ref.device import STRICT_ENV, resolve_device
from bitnet_ref.errors import DeviceError
from bitnet_ref.numerics import PROFILES

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "cuda_sim_child.py"
TIMEOUT_S = 600
# (format, synth arch, layers): small enough for the simulator, K = 256 for the TQ blocks; SiLU and relu² both run
MODELS = {"tq2_0": ("bitnet", 2), "tq1_0": ("bitnet", 1), "i2_s": ("bitnet-b1.58", 1)}
DIMS = {"n_embd": 256, "n_ff": 256, "n_head": 2, "n_head_kv": 1, "n_vocab": 300, "n_ctx": 64}
CLI = "import sys; from bitnet_ref.cli import main; sys.exit(main())"
MAX_REL = 1e-5  # max|Δ| / rms(logits), the bound (measured: 0, bit-identical)


def _env(**extra: str) -> dict[str, str]:
    """This environment with the checkout first on the path, without the CUDA switches unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", STRICT_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, **extra}


@pytest.fixture(scope="module")
def sim_results(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    """Every simulator child's npz, by job ("kernels" or a format), the children run concurrently."""
    d = tmp_path_factory.mktemp("cuda_sim")
    jobs = {"kernels": ["kernels", str(d / "kernels.npz")]}
    for fmt, (arch, n_layer) in MODELS.items():
        path = synth.synth_model(d / f"{fmt}.gguf", fmt=fmt, arch=arch, n_layer=n_layer, **DIMS)
        jobs[fmt] = ["model", str(path), str(d / f"{fmt}.npz")]
    procs = {name: subprocess.Popen([sys.executable, str(CHILD), *argv], env=_env(NUMBA_ENABLE_CUDASIM="1"),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, argv in jobs.items()}
    out = {}
    for name, p in procs.items():
        log, _ = p.communicate(timeout=TIMEOUT_S)
        assert p.returncode == 0, f"simulator child {name} failed:\n{log[-3000:]}"
        with np.load(jobs[name][-1]) as z:
            out[name] = {k: z[k] for k in z.files}
    return out


KERNEL_CASES = ["quantize_q", "quantize_s", "quantize_act_sum", "matmul_tq2_0", "matmul_tq1_0", "matmul_i2_s",
                "rmsnorm", "swiglu", "relu2", "add", "f16", "head_f16_8", "head_f16_16", "head_f32_8", "head_f32_16",
                "attention", "fma"]


@pytest.mark.parametrize("name", KERNEL_CASES)
def test_kernel_matches_cpu_twin_bit_for_bit(sim_results, name):
    r = sim_results["kernels"]
    cpu, gpu = r[f"{name}.cpu"], r[f"{name}.gpu"]
    assert cpu.shape == gpu.shape and cpu.dtype == gpu.dtype, (name, cpu.shape, gpu.shape, cpu.dtype, gpu.dtype)
    same = (cpu == gpu) | (np.isnan(cpu) & np.isnan(gpu)) if cpu.dtype.kind == "f" else cpu == gpu
    if not same.all():
        i = np.unravel_index(np.argmin(same), same.shape)
        pytest.fail(f"{name}: {int((~same).sum())} elements differ; first at {i}: cpu {cpu[i]!r} gpu {gpu[i]!r}")


@pytest.mark.parametrize("fmt", ["tq2_0", "tq1_0", "i2_s"])
def test_ternary_kernel_against_numpy(sim_results, fmt):
    """The packed product against Σ (decoded weight)·q in float64 / s: only the f32 epilogue's rounding apart."""
    r = sim_results["kernels"]
    gpu, ref = r[f"matmul_{fmt}.gpu"].astype(np.float64), r[f"matmul_{fmt}.numpy"]
    np.testing.assert_allclose(gpu, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max(), err_msg=fmt)
    assert np.abs(ref).max() > 0


@pytest.mark.parametrize("fmt", list(MODELS))
def test_model_logits_and_greedy_match_cpu(sim_results, fmt):
    r = sim_results[fmt]
    cpu, gpu = r["logits.cpu"], r["logits.cuda"]
    assert cpu.shape == gpu.shape == (4, DIMS["n_vocab"])
    rms = float(np.sqrt(np.mean(cpu.astype(np.float64) ** 2)))
    diff = np.abs(cpu.astype(np.float64) - gpu)
    pos, tok = np.unravel_index(int(diff.argmax()), diff.shape)
    assert diff.max() / rms <= MAX_REL, f"{fmt}: max|Δ|/rms {diff.max() / rms:.2e} at position {pos}, token {tok}"
    assert r["greedy.cpu"].tolist() == r["greedy.cuda"].tolist(), (fmt, r["greedy.cpu"], r["greedy.cuda"])
    assert "CUDA simulator" in str(r["describe_device.cuda"]) and "'cpu'" in str(r["describe_device.cpu"])


# ----------------------------------------------------------------------------------------------------------------------
# device selection on this host (no GPU, no simulator in this process)


def _no_gpu_here() -> None:
    try:
        gpu = resolve_device("auto").name == "cuda"
    except DeviceError:  # strict mode without a GPU
        gpu = False
    if gpu:
        pytest.skip("this host has a CUDA GPU")  # the GPU-less assertions below do not apply


def test_auto_runs_on_cpu_and_says_why(monkeypatch):
    monkeypatch.delenv(STRICT_ENV, raising=False)
    _no_gpu_here()
    d = resolve_device("auto")
    assert d.name == "cpu" and d.reason.startswith("auto: no CUDA GPU (") and d.reason.endswith("running on the CPU")
    assert resolve_device("cpu").reason == "cpu: requested"


def test_cuda_without_gpu_or_simulator_is_one_line_error(monkeypatch):
    monkeypatch.delenv(STRICT_ENV, raising=False)
    _no_gpu_here()
    with pytest.raises(DeviceError) as e:
        resolve_device("cuda")
    assert "\n" not in str(e.value) and "NUMBA_ENABLE_CUDASIM=1" in str(e.value)
    with pytest.raises(DeviceError):
        resolve_device("gpu")


def test_strict_refuses_cpu_fallback(monkeypatch):
    monkeypatch.setenv(STRICT_ENV, "1")
    _no_gpu_here()
    with pytest.raises(DeviceError, match="forbids the CPU fallback"):
        resolve_device("auto")


def test_ggml_profile_has_no_cuda_kernels():
    check_numerics(PROFILES["bitnet"])
    with pytest.raises(DeviceError, match="only the 'bitnet' profile"):
        check_numerics(PROFILES["ggml"])


def _generate(model: Path, device: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", CLI, "generate", "-m", str(model), "-p", "Hello", "-n", "2", "--seed", "1",
           "--device", device]
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return synth.synth_model(tmp_path_factory.mktemp("cuda_cli") / "tq2_0.gguf", fmt="tq2_0", n_layer=1, **DIMS)


def test_cli_auto_runs_on_cpu_and_says_so(tiny_model):
    _no_gpu_here()
    p = _generate(tiny_model, "auto")
    assert p.returncode == 0, p.stderr
    assert "device cpu (auto: no CUDA GPU (" in p.stderr and "running on the CPU)" in p.stderr


@pytest.mark.parametrize("sim", ["0", "1"])
def test_cli_strict_cuda_without_gpu_exits_1_in_one_line(tiny_model, sim):
    """Strict mode: neither the simulator nor the CPU may stand in for `--device cuda`."""
    _no_gpu_here()
    p = _generate(tiny_model, "cuda", **{STRICT_ENV: "1", "NUMBA_ENABLE_CUDASIM": sim})
    assert p.returncode == 1 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cuda: no"), p.stderr
    assert ("forbids the simulator" in lines[0]) == (sim == "1")


def test_cli_cuda_without_gpu_exits_1_in_one_line(tiny_model):
    _no_gpu_here()
    p = _generate(tiny_model, "cuda")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and "no usable CUDA GPU" in lines[0], p.stderr
