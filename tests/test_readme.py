"""The README's library example runs as written, on the model its command-line section makes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import bitnet_ref
from bitnet_ref.synth import synth_model

ROOT = Path(__file__).resolve().parents[1]


def test_public_names():
    from bitnet_ref import Model, Tokenizer, generate, load_model, read_gguf  # noqa: F401  (the issue's list)

    for name in bitnet_ref.__all__:
        assert getattr(bitnet_ref, name) is not None, name


def test_readme_library_example_runs(tmp_path):
    (code,) = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    synth_model(tmp_path / "tiny.gguf", preset="tiny", fmt="tq2_0", arch="bitnet", seed=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's package, wherever the test runs from
    runs = [subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600) for _ in range(2)]
    for res in runs:
        assert res.returncode == 0, res.stderr
    lines = runs[0].stdout.splitlines()
    assert len(lines) >= 2 and re.fullmatch(r"\(\d+, \d+\) \d+", lines[0]), lines
    assert runs[0].stdout == runs[1].stdout  # the same seed gives the same text
