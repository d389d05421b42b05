"""crossval and bench with bitnet_ref on a CUDA device: the case matrix and engine names carry the device, a GPU
that is not there is a one-line error, and one crossval case runs the CUDA kernels under numba's simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cases as BC
from bench import run as B
from crossval import cases as C
from reports.records import read_run

ROOT = Path(__file__).resolve().parents[1]


def crossval(*args: str, simulator: bool) -> subprocess.CompletedProcess:
    """`python -m crossval ...` in a child process, with numba's CUDA simulator on or off."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return subprocess.run([sys.executable, "-m", "crossval", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)


def test_cases_on_cuda_are_the_bitnet_profiles_gpu_formats():
    cases = C.on_device(C.matrix(quick=True), "cuda")
    assert cases and all(c.profile == "bitnet" and c.fmt in ("tq2_0", "tq1_0", "i2_s") for c in cases)
    assert all(c.id.endswith("-cuda") and c.device == "cuda" and "cuda" in c.model_key for c in cases)
    assert C.on_device(C.matrix(quick=True), "cpu") == C.matrix(quick=True)


def test_bench_engines_carry_the_device():
    specs = BC.Settings(numerics=("bitnet",), device="cuda", engines=("bitnet_ref", "llama.cpp")).engine_specs()
    assert [s.name for s in specs] == ["bitnet_ref[bitnet@cuda]", "llama.cpp"]
    assert BC.engine_spec("bitnet_ref[bitnet@cuda]") == specs[0] and BC.is_ref(specs[0].name)
    assert BC.engine_spec("bitnet_ref[ggml]").device == "cpu"
    with pytest.raises(Exception, match="runs the bitnet profile only"):
        B.settings_from(B.parser().parse_args(["--device", "cuda"]), "cuda")


def _has_gpu() -> bool:
    from bitnet_ref.device import resolve_device

    return resolve_device("auto").name == "cuda"


@pytest.mark.skipif(_has_gpu(), reason="this host has a CUDA GPU")
def test_cuda_without_a_gpu_is_one_line(capsys):
    done = crossval("--device", "cuda", "--quick", "--list", simulator=False)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "no usable CUDA GPU" in lines[0]
    assert B.main(["--device", "cuda", "--numerics", "bitnet", "--quick"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("error:") and "no usable CUDA GPU" in out[0]


def test_one_case_on_the_cuda_simulator_passes(tmp_path):
    """The GPU engine against llama.cpp, as a crossval case: every point, the logits, the greedy continuation."""
    done = crossval("--device", "cuda", "--quick", "--filter", "tiny-tq2_0-hello", "--out", str(tmp_path),
                    "--no-report", simulator=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "bitnet_ref on cuda (CUDA simulator)" in done.stdout
    run = next((tmp_path / "crossval").iterdir())
    meta, tables = read_run(run)
    assert list(tables["cases"]["case"]) == ["tiny-tq2_0-hello-bitnet-t2-cuda"]
    assert list(tables["cases"]["verdict"]) == ["PASS"]
    engine = next(iter(meta["backends"].values()))["engine"]
    assert engine["device"]["name"] == "cuda" and engine["device"]["simulator"] is True
    assert engine["kernel_isa"] == "cuda" and json.dumps(meta)  # records say where bitnet_ref ran
