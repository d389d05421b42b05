"""Byte orders a GGUF does not record (bitnet_ref.layout): the I2_S layout and TL tilings from a kernel_config.ini, on
the library and on the command line."""

from __future__ import annotations

import shutil

import pytest

from bitnet_ref import cli, formats, synth
from bitnet_ref.errors import ConfigError, FileAccessError, FormatError
from bitnet_ref.layout import Layout, kernel_config_text, sidecar

ROWS = ((3200, 8640, 160, 96, 32), (3200, 3200, 320, 96, 32), (8640, 3200, 320, 96, 32))  # bitnet.cpp's 3B TL2


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_kernel_config_round_trip_and_lookup(tmp_path):
    ini = tmp_path / "kernel_config.ini"
    ini.write_text(kernel_config_text(ROWS))
    lay = Layout.from_kernel_config(ini)
    assert lay.tilings == ROWS and lay.kernel_config == str(ini) and lay.i2s_format is formats.I2_S
    assert lay.tiling(formats.TL2, 3200, 8640) == (160, 96, 32)
    assert lay.describe() == {"i2s": "x86", "kernel_config": str(ini), "tilings": [list(r) for r in ROWS]}
    with pytest.raises(ConfigError, match=r"TL2 weight of shape M = 2560, K = 2560: no tiling .*kernel_config.ini"):
        lay.tiling(formats.TL2, 2560, 2560)
    with pytest.raises(FormatError, match=r"TL1: tiling .* does not fit M = 3200, K = 3200: need by \| BK \| K"):
        lay.tiling(formats.TL1, 3200, 3200)  # TL2's BK = 96 with a tail; TL1 needs BK | K
    assert Layout(i2s="arm").i2s_format is formats.I2_S_ARM


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "no \\[Kernels_i\\] sections"),
        ("[Kernels_0]\nm = 3200\nk = 8640\nbm = 160\nbk = 96\n", r"\[Kernels_0\] bmm = None"),
        ("[Kernels_0]\nm = 3200\nk = x\nbm = 160\nbk = 96\nbmm = 32\n", r"\[Kernels_0\] k = 'x'"),
        ("[Kernels_0]\nm = 0\nk = 1\nbm = 1\nbk = 1\nbmm = 1\n", r"m = '0'"),
        ("m = 3\n", "not a kernel_config.ini"),
    ],
)
def test_bad_kernel_config_is_a_one_line_config_error(tmp_path, text, needle):
    ini = tmp_path / "k.ini"
    ini.write_text(text)
    with pytest.raises(ConfigError, match=needle) as e:
        Layout.from_kernel_config(ini)
    assert str(ini) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileAccessError):
        Layout.from_kernel_config(tmp_path / "missing.ini")
    with pytest.raises(ConfigError, match="I2_S layout 'mips'"):
        Layout(i2s="mips")


def test_layout_options_on_the_command_line(tmp_path, capsys):
    tl2 = synth.synth_model(tmp_path / "tl2.gguf", fmt="tl2")
    assert sidecar(tl2).is_file()
    rc, _, err = run(capsys, "generate", "-m", tl2, "-p", "hi", "-n", "2", "--temp", "0")
    assert rc == 0 and f"TL tilings of {sidecar(tl2)}" in err, err
    lone = tmp_path / "lone" / "tl2.gguf"
    lone.parent.mkdir()
    shutil.copyfile(tl2, lone)
    rc, out, err = run(capsys, "generate", "-m", lone, "-p", "hi", "-n", "2")
    assert rc == 1 and out == "" and err.count("\n") == 1 and "no tiling" in err and "--kernel-config" in err, err
    rc, _, err = run(capsys, "generate", "-m", lone, "-p", "hi", "-n", "2", "--temp", "0", "--kernel-config",
                     sidecar(tl2))
    assert rc == 0, err
    rc, out, _ = run(capsys, "verify", lone)
    assert rc == 0 and "14 TL tensors with no tiling: scales only" in out, out
    rc, out, _ = run(capsys, "verify", lone, "--kernel-config", sidecar(tl2))
    assert rc == 0 and "no tiling" not in out, out
    bad = tmp_path / "bad.ini"
    bad.write_text("[Kernels_0]\nm = 1\n")
    rc, out, err = run(capsys, "generate", "-m", lone, "-p", "hi", "--kernel-config", bad)
    assert rc == 1 and err.startswith("error: ") and str(bad) in err and err.count("\n") == 1, err
    arm = synth.synth_model(tmp_path / "arm.gguf", fmt="i2_s_arm")
    rc, _, err = run(capsys, "generate", "-m", arm, "-p", "hi", "-n", "2", "--temp", "0", "--i2s-layout", "arm")
    assert rc == 0 and "I2_S layout arm" in err, err
