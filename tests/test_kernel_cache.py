"""numba's cache stays fresh across kernel modules: editing one kernel file recompiles a cached kernel of another."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import numpy as np
from bitnet_ref.kernels import activation
a = np.ones((1, 8), np.float32)
out = np.empty_like(a)
activation.add(a, a, out)
print(sum(activation.add.stats.cache_hits.values()), sum(activation.add.stats.cache_misses.values()))
"""


def _probe(copy: Path, cache: Path) -> tuple[int, int]:
    """(cache hits, cache misses) of activation.add in a fresh process over the copied package."""
    env = {**os.environ, "PYTHONPATH": str(copy), "NUMBA_CACHE_DIR": str(cache)}
    res = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600,
                         cwd=copy)
    assert res.returncode == 0, res.stderr
    hits, misses = map(int, res.stdout.split())
    return hits, misses


def test_editing_another_kernel_file_recompiles(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "bitnet_ref", copy / "bitnet_ref", ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    assert _probe(copy, cache) == (0, 1)  # compiled and written
    assert _probe(copy, cache) == (1, 0)  # loaded from the cache
    with open(copy / "bitnet_ref" / "kernels" / "scalar.py", "a") as f:
        f.write("\n# an edit to a helper module that activation.add does not itself live in\n")
    assert _probe(copy, cache) == (0, 1)  # numba alone would have loaded the stale entry
    assert _probe(copy, cache) == (1, 0)


def test_kernels_use_the_stamped_locator():
    from bitnet_ref.kernels import KERNEL_TREE_HASH, activation

    locator = activation.add._cache._impl.locator
    assert type(locator).__name__.startswith("KernelTree")
    assert locator.get_source_stamp()[1] == KERNEL_TREE_HASH
