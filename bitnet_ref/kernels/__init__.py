"""numba kernels: ternary products on packed weights, activation quantization, float ops; LLVM intrinsics they
share (intrinsics), the CPU features and ISA they target (isa).

Freshness of numba's on-disk cache: numba checks a cached kernel only against its own source file, so an edit to a
helper in another kernel module (an intrinsic, an inlined function) would leave stale machine code in the cache. Each
cache entry of a function that is, or calls into, a kernel of this package is therefore stamped with a hash of every
kernel source file and bitnet_ref.formats module too (the kernels compile the format classes' layout numbers in as
constants): editing any of them recompiles them all on next use.
"""

from __future__ import annotations

import hashlib
import types
from pathlib import Path

from numba.core import caching

_DIR = Path(__file__).resolve().parent


def _tree_hash() -> str:
    """sha256 over the names and contents of the .py files of this package and of bitnet_ref.formats."""
    h = hashlib.sha256()
    for path in sorted([*_DIR.glob("*.py"), *(_DIR.parent / "formats").glob("*.py")]):
        h.update(str(path.relative_to(_DIR.parent)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


KERNEL_TREE_HASH = _tree_hash()


def _is_kernel(value: object) -> bool:
    """Whether a global of a jitted function is this package (a kernel module, or a function defined in one)."""
    name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
    return isinstance(name, str) and name.startswith(__name__)


class _KernelTreeStamp:
    """Locator mixin: for functions in this package or calling into it, numba's source stamp plus the tree hash."""

    def get_source_stamp(self):
        return (super().get_source_stamp(), KERNEL_TREE_HASH)

    @classmethod
    def from_function(cls, py_func, py_file):
        in_tree = Path(py_file).resolve().parent == _DIR
        if not in_tree and not any(_is_kernel(v) for v in py_func.__globals__.values()):
            return None
        return super().from_function(py_func, py_file)


def _stamped(name: str) -> type:
    """A subclass of numba's locator `name` that adds the kernel tree's hash to its source stamp."""
    base = getattr(caching, name.lstrip("_"), None) or getattr(caching, name)
    return type(f"KernelTree{base.__name__.lstrip('_')}", (_KernelTreeStamp, base), {})


_LOCATORS = [_stamped(n) for n in ("_UserProvidedCacheLocator", "_InTreeCacheLocator", "_UserWideCacheLocator")]
_IMPL = getattr(caching, "CacheImpl", None) or caching._CacheImpl
_IMPL._locator_classes[:0] = [c for c in _LOCATORS if c not in _IMPL._locator_classes]
