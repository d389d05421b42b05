"""llama.cpp's own HF → GGUF converter, as users run it: convert_hf_to_gguf.py with its conversion/ package and
gguf-py, taken from the llama-cpp-python sdist of the installed version (PyPI, at test time; cached under
~/.cache/bitnet-ref/, never committed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from safetensors.numpy import load_file, save_file

VERSION = metadata.version("llama_cpp_python")
CACHE = Path.home() / ".cache" / "bitnet-ref" / f"llama-cpp-python-{VERSION}-converter"
PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
ONE_BIT_LLM_NAMES = {"self_attn.attn_sub_norm": "self_attn.inner_attn_ln", "mlp.ffn_sub_norm": "mlp.ffn_layernorm"}


def converter() -> Path:
    """The folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/ (downloaded once)."""
    if (CACHE / PARTS[0]).is_file():
        return CACHE
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={VERSION}", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("*.tar.gz"))
        staged = Path(tmp) / "converter"
        with tarfile.open(sdist) as tar:
            prefix = f"{tar.getnames()[0].split('/')[0]}/vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].startswith(PARTS)]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(staged, members=members, filter="data")
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(staged, CACHE)
    return CACHE


def with_1bitllm_names(src: Path, dst: Path) -> Path:
    """A copy of a checkpoint with the sub-norms under the 1bitLLM names, the only ones the converter maps (it stops on
    transformers' own names)."""
    shutil.copytree(src, dst)
    for shard in dst.glob("*.safetensors"):
        tensors = {_renamed(k): v for k, v in load_file(str(shard)).items()}
        save_file(tensors, str(shard), metadata={"format": "pt"})
    index = dst / "model.safetensors.index.json"
    if index.exists():
        index.write_text(_renamed(index.read_text()))
    return dst


def _renamed(text: str) -> str:
    for ours, theirs in ONE_BIT_LLM_NAMES.items():
        text = text.replace(ours, theirs)
    return text


def convert(src: Path, out: Path, outtype: str = "tq2_0", no_lazy: bool = False) -> subprocess.CompletedProcess:
    """Run the converter on a checkpoint folder (its output and exit status are the caller's to judge)."""
    root = converter()
    args = [sys.executable, str(root / PARTS[0]), str(src), "--outfile", str(out), "--outtype", outtype]
    env = {**os.environ, "PYTHONPATH": str(root / "gguf-py")}
    return subprocess.run(args + (["--no-lazy"] if no_lazy else []), capture_output=True, text=True, env=env,
                          timeout=600)
