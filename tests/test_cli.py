"""The bitnet-ref command line: synth, inspect and verify, their output and exit codes."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bitnet_ref import cli, synth, verify
from bitnet_ref.errors import BitnetRefError
from bitnet_ref.formats import TQ2_0
from bitnet_ref.gguf_reader import read_gguf

LINEAR = "blk.1.attn_v.weight"
VOCAB_GGUF = Path(__file__).resolve().parent / "fixtures" / "vocab" / "ggml-vocab-llama-bpe.gguf"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    return {
        "tq2_0": synth.synth_model(d / "tq2_0.gguf", fmt="tq2_0"),
        "i2_s": synth.synth_model(d / "i2_s.gguf", fmt="i2_s", arch="bitnet-b1.58"),
        "f16": synth.synth_model(d / "f16.gguf", fmt="f16"),
    }


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def corrupt(src, dst, name, at, value: bytes):
    """Copy src to dst and overwrite bytes at offset `at` of tensor `name`."""
    shutil.copyfile(src, dst)
    with read_gguf(dst) as g:
        offset = g.tensors[name].offset + at
    with open(dst, "r+b") as f:
        f.seek(offset)
        f.write(value)
    return dst


def test_parser_has_a_table_of_subcommands():
    assert [c.name for c in cli.COMMANDS][:3] == ["synth", "inspect", "verify"]
    with pytest.raises(SystemExit) as e:
        cli.main(["synth", "--preset", "huge"])
    assert e.value.code == 2


def test_synth_writes_the_file_and_reports_it(tmp_path, capsys, models):
    out_path = tmp_path / "m.gguf"
    rc, out, _ = run(capsys, "synth", "--preset", "tiny", "--format", "tq2_0", "--seed", "0", "-o", out_path, "-q")
    assert rc == 0 and str(out_path) in out and out_path.read_bytes() == models["tq2_0"].read_bytes()


def test_synth_overrides_and_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(synth.CACHE_ENV, str(tmp_path))
    rc, out, _ = run(
        capsys,
        "synth",
        "--format",
        "f32",
        "--arch",
        "bitnet",
        "--n-layer",
        "1",
        "--n-vocab",
        "300",
        "--n-ctx",
        "64",
        "--rope-base",
        "10000",
        "--n-head",
        "2",
        "--n-head-kv",
        "1",
        "--n-embd",
        "128",
        "--n-ff",
        "256",
    )
    assert rc == 0
    (path,) = (tmp_path / "models").glob("*.gguf")
    assert str(path) in out.replace("\n", "")
    with read_gguf(path) as g:
        assert g.metadata["bitnet.block_count"] == 1 and len(g.metadata["tokenizer.ggml.tokens"]) == 300


def test_synth_library_error_exits_1_with_a_message(tmp_path, capsys):
    rc, _, err = run(capsys, "synth", "--format", "tq2_0", "--n-embd", "128", "-o", tmp_path / "x.gguf")
    assert rc == 1 and "n_embd = 128 is not a multiple of 256" in err


def test_inspect_shows_architecture_config_tokenizer_and_tensors(capsys, models):
    rc, out, _ = run(capsys, "inspect", models["i2_s"])
    assert rc == 0
    for text in (
        "bitnet-b1.58",
        "ffn_act",
        "relu2",
        "n_head_kv",
        "gpt2",
        "llama-bpe",
        "n_merges 254",
        "<|begin_of_text|>",
        "blk.1.ffn_down.weight",
        "I2_S",
        "[512, 256]",
        "2.004",
        "token_embd.weight",
    ):
        assert text in out, text
    rc, out, _ = run(capsys, "inspect", models["tq2_0"], "--ffn-act", "relu2")
    assert rc == 0 and "override" in out and "2.062" in out


def test_verify_passes_on_every_synthetic_format(capsys, models):
    for path in models.values():
        rc, out, _ = run(capsys, "verify", path)
        assert rc == 0 and out.startswith("OK ") and out.count("\n") == 1, out
    assert "14 ternary tensors" in out or "no ternary tensors" in out


def test_verify_json(capsys, models):
    rc, out, _ = run(capsys, "verify", models["tq2_0"], "--json")
    report = json.loads(out)
    assert rc == 0 and report["ok"] and report["n_ternary"] == 14 and report["elements"] == 1_313_536
    assert report["verdict"].startswith("OK")


def test_verify_names_a_corrupted_scale(tmp_path, capsys, models):
    nan = np.array([np.nan], dtype="<f2").tobytes()
    bad = corrupt(models["tq2_0"], tmp_path / "nan.gguf", LINEAR, 3 * TQ2_0.BLOCK_BYTES + 64, nan)
    rc, out, _ = run(capsys, "verify", bad)
    assert rc == 1 and out.startswith("FAIL") and "scales" in out and LINEAR in out and "block 3" in out
    rc, out, _ = run(capsys, "verify", bad, "--json")
    report = json.loads(out)
    assert rc == 1 and not report["ok"] and report["stage"] == "scales" and LINEAR in report["problem"]


def test_verify_names_a_zero_scale_on_a_used_block(tmp_path, capsys, models):
    bad = corrupt(models["tq2_0"], tmp_path / "zero.gguf", LINEAR, 64, b"\0\0")
    rc, out, _ = run(capsys, "verify", bad)
    assert rc == 1 and "tensors" in out and LINEAR in out and "row 0 block 0: scale 0.0" in out


def test_verify_names_a_non_ternary_code(tmp_path, capsys, models):
    bad = corrupt(models["tq2_0"], tmp_path / "code3.gguf", LINEAR, 0, b"\xff")  # four codes 3 -> +2 * d
    rc, out, _ = run(capsys, "verify", bad)
    assert rc == 1 and LINEAR in out and "row 0 col 0" in out and "not in {-1, 0, 1}" in out
    bad = corrupt(models["i2_s"], tmp_path / "i2s3.gguf", LINEAR, 5, b"\xff")
    rc, out, _ = run(capsys, "verify", bad)
    assert rc == 1 and LINEAR in out and "byte 5" in out and "code 3" in out


def test_verify_names_a_corrupted_i2_s_scale(tmp_path, capsys, models):
    with read_gguf(models["i2_s"]) as g:
        at = g.tensors[LINEAR].n_elements // 4
    bad = corrupt(models["i2_s"], tmp_path / "i2s_nan.gguf", LINEAR, at, np.array([-1.0], "<f4").tobytes())
    rc, out, _ = run(capsys, "verify", bad)
    assert rc == 1 and LINEAR in out and "-1.0" in out


def test_verify_reports_unreadable_and_non_model_files(tmp_path, capsys, models):
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(models["f16"].read_bytes()[:-1000])
    rc, out, _ = run(capsys, "verify", trunc)
    assert rc == 1 and out.startswith("FAIL") and ": read:" in out
    rc, out, _ = run(capsys, "verify", VOCAB_GGUF)
    assert rc == 1 and ": config:" in out and "'llama' is not supported" in out


def test_verify_chunks_big_tensors_in_rows(monkeypatch, capsys, models):
    monkeypatch.setattr(verify, "CHUNK_ELEMENTS", 1000)  # forces many chunks, also for I2_S (trailer per chunk)
    for path in models.values():
        rc, out, _ = run(capsys, "verify", path)
        assert rc == 0, out


def test_inspect_a_file_without_a_model_config(capsys):
    rc, out, _ = run(capsys, "inspect", VOCAB_GGUF)
    assert rc == 0 and "no model config" in out and "n_merges 280147" in out and "0 weights" in out


# ----------------------------------------------------------------------------------------------------------------------
# crossval, bench, report: every argument after the name reaches the module's main unchanged

FORWARDS = {"crossval": "crossval.run", "bench": "bench.run", "report": "reports.__main__"}


@pytest.fixture
def forwarded(monkeypatch):
    """(module, argv) of each call that reaches a forwarded main; the harness packages themselves are not imported."""
    calls = []
    real = importlib.import_module

    def fake(name, package=None):
        if name not in FORWARDS.values():
            return real(name, package)
        return SimpleNamespace(main=lambda argv: calls.append((name, argv)) or 0)

    monkeypatch.setattr(importlib, "import_module", fake)
    return calls


@pytest.mark.parametrize(
    "argv",
    [
        ["crossval", "--quick"],
        ["bench", "--quick", "--reps", "1"],
        ["report", "out"],
        ["report"],
        ["crossval", "--help"],
        ["bench", "-h"],
        ["crossval", "--version"],
        ["crossval", "--filter", "tiny-tq2_0", "--out=/tmp/x y", "--", "--quick"],
        ["bench", "crossval", "--baseline", "report"],
    ],
    ids=" ".join,
)
def test_forwarding_commands_pass_every_argument_unchanged(forwarded, argv):
    assert cli.main(argv) == 0
    assert forwarded == [(FORWARDS[argv[0]], argv[1:])]


def test_a_forwarded_exit_status_and_library_error_come_back(monkeypatch, capsys):
    def fail(argv):
        raise BitnetRefError(f"planted failure for {argv}")

    module = SimpleNamespace(main=lambda argv: 2)
    monkeypatch.setattr(importlib, "import_module", lambda name, package=None: module)
    assert cli.main(["bench", "--quick"]) == 2
    module.main = fail
    rc, out, err = run(capsys, "crossval", "--quick")
    assert rc == 1 and out == "" and err == "error: planted failure for ['--quick']\n"


def test_crossval_help_is_crossvals_own(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["crossval", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "python -m crossval" in out and "--quick" in out and "--filter" in out


def test_top_level_help_lists_the_forwarding_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(name in out for name in FORWARDS)


# ----------------------------------------------------------------------------------------------------------------------
# Paths that are missing, directories or not regular files: one line naming the path, exit 1, no traceback


def _fifo(path: Path) -> Path:
    os.mkfifo(path)  # stat says FIFO, so nothing opens it (opening one to read would block until a writer comes)
    return path


def _under_a_file(d: Path) -> Path:
    (d / "plain").write_bytes(b"")
    return d / "plain" / "x.gguf"


BAD_PATHS = {
    "missing": lambda d: d / "no-such.gguf",
    "directory": lambda d: d,
    "fifo": lambda d: _fifo(d / "pipe.gguf"),
    "under-a-file": _under_a_file,
}
READING = {
    "verify": ["verify", "{}"],
    "verify-json": ["verify", "{}", "--json"],
    "inspect": ["inspect", "{}"],
    "generate": ["generate", "-m", "{}", "-p", "hi"],
    "synth-vocab": ["synth", "-q", "--vocab", "{}"],
}
WRITING = {
    "missing": lambda d: d / "no-such-dir" / "x.gguf",
    "directory": lambda d: d,
    "fifo": lambda d: _fifo(d / "pipe.gguf"),
    "under-a-file": _under_a_file,
}


def assert_one_line_error(capsys, argv, path):
    rc, out, err = run(capsys, *argv)
    assert rc == 1 and out == "", (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and str(path) in err and "Traceback" not in err, err


@pytest.mark.parametrize("kind", BAD_PATHS)
@pytest.mark.parametrize("command", READING)
def test_a_bad_input_path_is_a_one_line_error(tmp_path, monkeypatch, capsys, command, kind):
    monkeypatch.setenv(synth.CACHE_ENV, str(tmp_path / "cache"))
    path = BAD_PATHS[kind](tmp_path)
    assert_one_line_error(capsys, [a.format(path) for a in READING[command]], path)


@pytest.mark.parametrize("kind", WRITING)
def test_a_bad_output_path_is_a_one_line_error(tmp_path, capsys, kind):
    path = WRITING[kind](tmp_path)
    assert_one_line_error(capsys, ["synth", "-q", "-o", path], path)
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"


DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def _cli_without_permission_override(*argv) -> subprocess.CompletedProcess:
    """The CLI in a process that obeys permission bits: root's DAC override capabilities dropped (util-linux
    setpriv), so that a mode-000 file is unreadable even in a test session running as root."""
    prefix = DROP_DAC if os.geteuid() == 0 else []
    cmd = [*prefix, sys.executable, "-m", "bitnet_ref.cli", *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])


def test_unreadable_file_and_unwritable_folder_are_one_line_errors(tmp_path, models):
    locked = tmp_path / "locked.gguf"
    shutil.copyfile(models["f16"], locked)
    locked.chmod(0)
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    cases = [(["verify", locked], locked), (["inspect", locked], locked),
             (["generate", "-m", locked, "-p", "hi"], locked), (["synth", "-q", "-o", folder / "x.gguf"], folder)]
    for argv, path in cases:
        res = _cli_without_permission_override(*argv)
        assert res.returncode == 1 and res.stdout == "", (argv, res.stdout, res.stderr)
        assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
        assert str(path) in res.stderr and "Permission denied" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("argv", [
    ["report", "{missing}"],
    ["report", "{file}"],
    ["bench", "--quick", "--baseline", "{missing}"],
    ["crossval", "--thresholds", "{missing}", "--list"],
    ["crossval", "--thresholds", "{file}", "--list"],
])
def test_harness_commands_answer_a_bad_path_in_one_line(tmp_path, capsys, argv):
    missing, file = tmp_path / "no-such", tmp_path / "a-file.txt"
    file.write_text("not what was asked for\n")
    rc, out, err = run(capsys, *[a.format(missing=missing, file=file) for a in argv])
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: "), (out, err)
    assert tmp_path.name in lines[0] and not missing.exists()
