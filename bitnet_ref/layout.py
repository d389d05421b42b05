"""Byte orders a GGUF does not record, chosen by the caller and recorded with every result (docs/FORMATS.md §3.2, §3.4).

- The I2_S layout: "x86" (128-element blocks, every published file) or "arm" (64-element blocks, written by ARM builds
  of bitnet.cpp after 112f853). Both have type id 36 and the same size; only the caller can say which one a file is.
- The TL1/TL2 tiling of each weight shape (M, K): BM, BK and bm, which bitnet.cpp takes from the build's
  `include/kernel_config.ini` (sections `[Kernels_i]` with keys m, k, bm, bk, bmm). `Layout.from_kernel_config` reads
  such a file; `kernel_config_text` writes one. A GGUF with TL tensors that has a `<stem>.kernel_config.ini` beside it
  (what `bitnet-ref synth --format tl1|tl2` writes) uses that file unless the caller gives another (`sidecar`).
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path

from bitnet_ref import formats
from bitnet_ref.errors import ConfigError, FileAccessError
from bitnet_ref.files import check_readable
from bitnet_ref.formats import I2_S, I2_S_ARM, Format
from bitnet_ref.gguf_reader import GGUFFile

I2S_LAYOUTS = {"x86": I2_S, "arm": I2_S_ARM}
KERNEL_CONFIG_SUFFIX = ".kernel_config.ini"
KERNEL_CONFIG_KEYS = ("m", "k", "bm", "bk", "bmm")  # M, K, BM, BK, bm of one [Kernels_i] section


@dataclass(frozen=True)
class Layout:
    """The I2_S layout and the TL tilings (M, K, BM, BK, bm) a model is read with; `kernel_config` names their file."""

    i2s: str = "x86"
    tilings: tuple[tuple[int, int, int, int, int], ...] = ()
    kernel_config: str | None = None

    def __post_init__(self) -> None:
        if self.i2s not in I2S_LAYOUTS:
            raise ConfigError(f"I2_S layout {self.i2s!r}; expected one of {', '.join(I2S_LAYOUTS)}")

    @property
    def i2s_format(self) -> type[I2_S]:
        """The I2_S format class of this layout (I2_S or I2_S_ARM)."""
        return I2S_LAYOUTS[self.i2s]

    def tiling(self, fmt: type[Format], m: int, k: int) -> tuple[int, int, int]:
        """(BM, BK, bm) of an (M, K) weight in TL1/TL2 `fmt`, checked against its rules; ConfigError naming the shape
        and where the tilings came from when there is none."""
        for row in self.tilings:
            if row[:2] == (m, k):
                tiling = fmt.Tiling(*row[2:])
                tiling.check(m, k)
                return row[2:]
        where = self.kernel_config or "no kernel_config.ini given"
        raise ConfigError(
            f"{fmt.NAME.upper()} weight of shape M = {m}, K = {k}: no tiling for it ({where}); bitnet.cpp takes it "
            "from the build's include/kernel_config.ini: pass that file (--kernel-config)"
        )

    def __str__(self) -> str:
        tl = f"TL tilings of {self.kernel_config} ({len(self.tilings)} shapes)" if self.tilings else "no TL tilings"
        return f"I2_S layout {self.i2s} · {tl}"

    def describe(self) -> dict:
        """Plain data for records."""
        return {"i2s": self.i2s, "kernel_config": self.kernel_config, "tilings": [list(t) for t in self.tilings]}

    @classmethod
    def from_kernel_config(cls, path: str | Path, i2s: str = "x86") -> Layout:
        """The tilings of a bitnet.cpp kernel_config.ini; ConfigError naming the file, section and key on bad input."""
        check_readable(path)
        parser = configparser.ConfigParser()
        try:
            parser.read_string(Path(path).read_text(encoding="utf-8"), source=str(path))
        except (configparser.Error, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not a kernel_config.ini: {str(e).splitlines()[0]}") from None
        except OSError as e:
            raise FileAccessError(path, "read", e) from None
        rows = []
        for section in parser.sections():
            values = []
            for key in KERNEL_CONFIG_KEYS:
                raw = parser[section].get(key)
                if raw is None or not raw.strip().isdigit() or int(raw) <= 0:
                    raise ConfigError(f"{path}: [{section}] {key} = {raw!r}; expected a positive integer")
                values.append(int(raw))
            rows.append(tuple(values))
        if not rows:
            raise ConfigError(f"{path}: no [Kernels_i] sections with keys {', '.join(KERNEL_CONFIG_KEYS)}")
        return cls(i2s=i2s, tilings=tuple(rows), kernel_config=str(path))


def kernel_config_text(tilings: tuple[tuple[int, int, int, int, int], ...]) -> str:
    """A kernel_config.ini holding tilings (M, K, BM, BK, bm), one [Kernels_i] section each, as bitnet.cpp's codegen
    writes it."""
    parts = []
    for i, row in enumerate(tilings):
        lines = "".join(f"{key} = {v}\n" for key, v in zip(KERNEL_CONFIG_KEYS, row, strict=True))
        parts.append(f"[Kernels_{i}]\n{lines}")
    return "\n".join(parts)


def read_layout(gguf: GGUFFile, i2s: str = "x86", kernel_config: str | Path | None = None) -> Layout:
    """The layout of a file: the I2_S layout given, and the TL tilings of `kernel_config`, or else of the sidecar
    kernel_config.ini when the file has TL1/TL2 tensors and one is beside it."""
    if kernel_config is not None:
        return Layout.from_kernel_config(kernel_config, i2s=i2s)
    has_tl = any(formats.get(t.type).SCALE_TENSOR for t in gguf.tensors.values())
    if has_tl and sidecar(gguf.path).is_file():
        return Layout.from_kernel_config(sidecar(gguf.path), i2s=i2s)
    return Layout(i2s=i2s)


def sidecar(gguf_path: str | Path) -> Path:
    """The kernel_config.ini that belongs beside a GGUF: `<stem>.kernel_config.ini`."""
    p = Path(gguf_path)
    return p.with_name(p.name.removesuffix(".gguf") + KERNEL_CONFIG_SUFFIX)
