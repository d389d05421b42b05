"""The reference runs isolated: its crash, abort, hang or error is one case's ERROR, never the end of the run, and a
run killed midway leaves records a report can be built from."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import crashers
import pytest

import crossval.llama_cpp_backend  # noqa: F401  (a hard dependency: these tests fail, never skip, without it)
from crossval import run as R
from crossval.isolated import ChildError, Isolated
from reports import records
from reports.html import build_report

ROOT = Path(__file__).resolve().parents[1]
MISBEHAVING = f"{crashers.__name__}:Misbehaving"


@pytest.fixture
def child():
    c = Isolated(MISBEHAVING, {"greeting": "hello from the child"}, name="toy", timeout=60)
    yield c
    c.close()


def test_calls_return_values(child):
    assert child.call("echo", {"a": [1, 2]}) == {"a": [1, 2]}


def test_abort_is_an_error_naming_the_signal_and_last_output(child):
    with pytest.raises(ChildError) as info:
        child.call("abort", "last words before abort")
    err = info.value
    assert err.signal_name == "SIGABRT"
    assert "toy died with SIGABRT during abort" in str(err) and "last words before abort" in str(err)
    assert "hello from the child" in err.tail
    with pytest.raises(ChildError, match="not running"):
        child.call("echo", 1)


def test_hang_past_timeout_is_killed(child):
    t0 = time.monotonic()
    with pytest.raises(ChildError, match="gave no answer to hang within 1 s"):
        child.call("hang", 60, timeout=1.0)
    assert time.monotonic() - t0 < 30 and not child.process.is_alive()


def test_exception_in_child_is_an_error_and_the_child_lives_on(child):
    with pytest.raises(ChildError, match="toy fail failed: ValueError: bad value 42"):
        child.call("fail")
    assert child.call("echo", 7) == 7


def test_failed_construction_is_an_error():
    with pytest.raises(ChildError, match="toy start failed: TypeError"):
        Isolated(MISBEHAVING, {"no_such_argument": 1}, name="toy", timeout=60)


@pytest.mark.llama
def test_crashing_reference_is_error_and_the_run_goes_on(tmp_path, capsys):
    """SIGSEGV inside llama_decode on the q8_0 model: its case is ERROR naming the signal, the f32 case is still
    judged, the run exits 1, and the records are complete."""
    cases = "tiny-q8_0-hello-ggml,tiny-f32-hello-ggml"
    status = R.main(["--quick", "--filter", cases, "--out", str(tmp_path), "--no-report",
                     "--reference", f"{crashers.__name__}:CrashingLlama"])
    assert status == 1
    (path,) = records.list_runs(tmp_path, kind="crossval")
    meta, tables = records.read_run(path)
    assert meta["complete"] and meta["verdict"] == "fail"
    by_case = tables["cases"].set_index("case")
    assert by_case.loc["tiny-q8_0-hello-ggml-t2", "verdict"] == "ERROR"
    assert "llama.cpp died with SIGSEGV during greedy" in by_case.loc["tiny-q8_0-hello-ggml-t2", "location"]
    assert by_case.loc["tiny-f32-hello-ggml-t2", "verdict"] == "PASS"
    assert set(tables["points"].case) == {"tiny-f32-hello-ggml-t2"}
    assert not list(path.glob("*.jsonl"))
    assert "SIGSEGV" in capsys.readouterr().out


@pytest.mark.llama
def test_killed_run_leaves_records_a_report_can_be_built_from(tmp_path):
    """kill -9 of the harness after its first case: run.json says incomplete, the finished case is readable, and
    the report says the run stopped."""
    cmd = [sys.executable, "-m", "crossval", "--quick", "--filter", "tiny-f32-hello,tiny-f16-hello", "--out",
           str(tmp_path), "--no-report"]
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the killed harness cannot remove its reference's log file
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            journals = list(tmp_path.glob("crossval/*/cases.jsonl"))
            if journals and journals[0].read_text().count("\n") >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (path,) = records.list_runs(tmp_path, kind="crossval")
    meta, tables = records.read_run(path)
    assert meta["complete"] is False and meta["verdict"] == "incomplete" and meta["n_cases"] == 4
    assert 1 <= len(tables["cases"]) < 4 and set(tables["cases"].verdict) == {"PASS"}
    assert set(tables["points"].case) <= set(tables["cases"].case)
    html = build_report(path).read_text()
    assert "INCOMPLETE" in html and tables["cases"].case.iloc[0] in html
