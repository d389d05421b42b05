"""Which x86 instructions the kernels may use: the CPU features numba targets, and the ternary kernels' ISA choice.

Two decisions rest on `host_features()`, numba's target (NUMBA_CPU_FEATURES if set, else the host's):
- at compile time, `host_has` tells each intrinsic of intrinsics.py whether to emit its fast instruction (vcvtph2ps,
  vpmaddubsw, vpdpbusd) or the portable LLVM code with the same result (the one fallback path);
- at run time, the ternary kernels take an `isa` argument, ISA_PORTABLE (plain numba loops), ISA_AVX2 or
  ISA_AVX512VNNI (dot intrinsics); `default_isa()` picks the fastest the host supports, once, unless
  $BITNET_KERNEL_ISA names one.

Its own module, not part of intrinsics.py: these are Python-level facts about the host that the engine, the tests
and bench read without touching LLVM, and intrinsics.py is long enough with the code generators alone.
"""

from __future__ import annotations

import os

from numba.core.codegen import get_host_cpu_features

from bitnet_ref.errors import ConfigError

ISA_PORTABLE = 0
ISA_AVX2 = 1
ISA_AVX512VNNI = 2
ISA_NAMES = ("portable", "avx2", "avx512vnni")
_ISA_FEATURES = {ISA_PORTABLE: (), ISA_AVX2: ("avx2",), ISA_AVX512VNNI: ("avx2", "avx512vnni", "avx512vl")}
ISA_ENV = "BITNET_KERNEL_ISA"


def host_features() -> frozenset[str]:
    """CPU features numba's code generator targets (NUMBA_CPU_FEATURES if set, else the host's), without the '+'."""
    from numba.core import config

    flat = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return frozenset(f[1:] for f in flat.split(",") if f.startswith("+"))


def host_has(*features: str) -> bool:
    """True when numba's target has every one of `features` (e.g. 'f16c', 'avx2')."""
    have = host_features()
    return all(f in have for f in features)


def isa_supported(isa: int) -> bool:
    """True when the host can execute the instruction sequence of `isa` (portable always can)."""
    return host_has(*_ISA_FEATURES[isa])


def available_isas() -> tuple[str, ...]:
    """Names of the instruction sequences this host can run, slowest first."""
    return tuple(name for i, name in enumerate(ISA_NAMES) if isa_supported(i))


def isa_id(name: str) -> int:
    """The id of an ISA name; raises ConfigError for an unknown name or one this host cannot run."""
    if name not in ISA_NAMES:
        raise ConfigError(f"{ISA_ENV}: unknown kernel ISA {name!r}; expected one of {ISA_NAMES}")
    isa = ISA_NAMES.index(name)
    if not isa_supported(isa):
        raise ConfigError(f"{ISA_ENV}: kernel ISA {name!r} needs CPU features {_ISA_FEATURES[isa]}; host has not")
    return isa


def default_isa() -> int:
    """The ISA the kernels use unless told otherwise: $BITNET_KERNEL_ISA, else the fastest the host supports."""
    name = os.environ.get(ISA_ENV)
    if name:
        return isa_id(name)
    return ISA_NAMES.index(available_isas()[-1])
