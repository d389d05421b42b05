"""GGUF reader: alignment, zero-copy views, type-id resolution, scales, gguf-py cross-checks, paths it cannot read."""

from __future__ import annotations

import math
import os
from pathlib import Path

import gguf
import gguf_builders as gb
import numpy as np
import pytest

from bitnet_ref.constants import (
    ARCH_BITNET,
    ARCH_BITNET_B158,
    KEY_ALIGNMENT,
    KEY_ARCHITECTURE,
    GGMLType,
    ValueType,
)
from bitnet_ref.errors import (
    BitnetRefError,
    FileAccessError,
    GGUFError,
    ScaleError,
    TensorBoundsError,
    UnknownTypeError,
)
from bitnet_ref.formats import get as get_format
from bitnet_ref.gguf_reader import GGUFFile, TensorInfo, read_gguf
from bitnet_ref.gguf_writer import GGUFWriter
from bitnet_ref.verify import check_scales

VOCAB_DIR = Path(__file__).resolve().parent / "fixtures" / "vocab"
V = ValueType


def test_reader_honours_explicit_default_alignment_key(tmp_path: Path) -> None:
    data = gb.build([gb.kv(KEY_ALIGNMENT, V.UINT32, 32)], [gb.TensorSpec("x", (1,), GGMLType.F32)])
    assert read_gguf(gb.write(tmp_path / "a.gguf", data)).alignment == 32


def test_tensor_bytes_is_a_read_only_view_of_the_mapping(tmp_path: Path) -> None:
    path = gb.write(tmp_path / "s.gguf", gb.small_valid_file())
    g = read_gguf(path)
    view = g.tensor_bytes("norm.weight")
    assert isinstance(view, np.memmap) and view.base is g._data
    assert not view.flags.writeable and view.dtype == np.uint8 and view.size == 32
    np.testing.assert_array_equal(view.view(np.float32), np.arange(8))
    g.close()
    np.testing.assert_array_equal(view.view(np.float32), np.arange(8))  # views outlive close()


def test_opening_a_sparse_1gb_file_maps_without_reading(tmp_path: Path) -> None:
    n = 2**28  # F32 elements: 1 GiB of data that is never written (a hole in a sparse file)
    header = gb.build([gb.kv(KEY_ARCHITECTURE, V.STRING, ARCH_BITNET)], [gb.TensorSpec("big", (n,), GGMLType.F32, b"")])
    path = gb.write(tmp_path / "big.gguf", header)
    with open(path, "r+b") as f:
        f.truncate(len(header) + 4 * n)
    with read_gguf(path) as g:
        info = g.tensors["big"]
        assert info.nbytes == 2**30 and info.offset == len(header)
        view = g.tensor_bytes("big")
        assert isinstance(view, np.memmap) and view.base is g._data and view.size == 2**30


def test_tensor_info_properties() -> None:
    t = TensorInfo("w", (256, 3, 2), GGMLType.TQ2_0, 64, 66 * 6)
    assert (t.n_elements, t.rows, t.cols) == (1536, 6, 256)
    s = TensorInfo("w_scale", (), GGMLType.F32, 0, 4)
    assert (s.n_elements, s.rows, s.cols) == (1, 1, 1)


def test_get_and_arch(tmp_path: Path) -> None:
    g = read_gguf(gb.write(tmp_path / "s.gguf", gb.small_valid_file()))
    assert g.arch == ARCH_BITNET and g.get("missing", 5) == 5 and g.get("general.name") == "tiny"
    with pytest.raises(GGUFError, match="missing"):
        g.get("missing")
    with pytest.raises(GGUFError, match="nope"):
        g.tensor_bytes("nope")
    assert list(g.tensors) == ["norm.weight", "emb.weight", "q8.weight", "tq.weight"]


# ----------------------------------------------------------------------------------------------------------------------
# bitnet.cpp types and the id-39 collision


def tl_file(type_id: int, arch: str = ARCH_BITNET, scale: bool = True, scale_value: float = 0.5) -> bytes:
    """A file with one TL1/TL2 weight (K=256, M=4), optionally followed by its `_scale` tensor."""
    shape = (256, 4)
    tensors = [gb.TensorSpec("blk.0.attn_q.weight", shape, type_id, bytes(get_format(type_id).nbytes(shape)))]
    if scale:
        tensors.append(gb.TensorSpec("blk.0.attn_q.weight_scale", (1,), GGMLType.F32, gb.f32_bytes([scale_value])))
    return gb.build([gb.kv(KEY_ARCHITECTURE, V.STRING, arch)], tensors)


def test_type_39_with_scale_tensor_is_tl2(tmp_path: Path) -> None:
    g = read_gguf(gb.write(tmp_path / "t.gguf", tl_file(GGMLType.TL2)))
    assert g.tensors["blk.0.attn_q.weight"].type == GGMLType.TL2
    check_scales(g)


def test_type_39_in_fork_architecture_is_tl2(tmp_path: Path) -> None:
    g = read_gguf(gb.write(tmp_path / "t.gguf", tl_file(GGMLType.TL2, arch=ARCH_BITNET_B158, scale=False)))
    assert g.tensors["blk.0.attn_q.weight"].type == GGMLType.TL2


def test_type_39_without_evidence_is_mxfp4_and_refused(tmp_path: Path) -> None:
    shape = (256, 4)
    mx = math.prod(shape) // 32 * 17  # 544 bytes: MXFP4's size; TL2 would take 256
    data = gb.build([gb.kv(KEY_ARCHITECTURE, V.STRING, ARCH_BITNET)], [gb.TensorSpec("w", shape, 39, bytes(mx))])
    with pytest.raises(UnknownTypeError, match="MXFP4 in mainline") as e:
        read_gguf(gb.write(tmp_path / "t.gguf", data))
    assert "'w_scale'" in str(e.value) and "'bitnet'" in str(e.value) and "cannot be decided" not in str(e.value)


def test_type_39_whose_bytes_fit_only_tl2_cannot_be_decided(tmp_path: Path) -> None:
    path = gb.write(tmp_path / "t.gguf", tl_file(GGMLType.TL2, scale=False))
    with pytest.raises(UnknownTypeError, match="cannot be decided"):
        read_gguf(path)


def test_type_39_marked_tl2_must_fit_before_the_next_tensor(tmp_path: Path) -> None:
    tensors = [
        gb.TensorSpec("w", (256, 4), 39, bytes(128)),
        gb.TensorSpec("w_scale", (1,), GGMLType.F32, gb.f32_bytes([1.0]), offset=128),
    ]
    with pytest.raises(TensorBoundsError, match="'w_scale'"):
        read_gguf(gb.write(tmp_path / "t.gguf", gb.build([], tensors)))


@pytest.mark.parametrize("type_id", [GGMLType.I2_S, GGMLType.TL1])
def test_fork_types_are_read(tmp_path: Path, type_id: GGMLType) -> None:
    g = read_gguf(gb.write(tmp_path / "t.gguf", tl_file(type_id)))
    info = g.tensors["blk.0.attn_q.weight"]
    assert info.type == type_id and info.nbytes == get_format(type_id).nbytes((256, 4))


# ----------------------------------------------------------------------------------------------------------------------
# Scales


@pytest.mark.parametrize("fmt", [GGMLType.TQ1_0, GGMLType.TQ2_0])
@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), float("-inf")])
def test_check_scales_names_the_bad_tq_block(tmp_path: Path, fmt: GGMLType, bad: float) -> None:
    scales = [0.5, 0.0, -0.0, 1.0, bad, 0.25]
    data = gb.build([], [gb.TensorSpec("w", (256, 6), fmt, gb.tq_blocks(fmt, scales))])
    g = read_gguf(gb.write(tmp_path / "s.gguf", data))
    with pytest.raises(ScaleError, match=r"'w' block 4 scale d") as e:
        check_scales(g)
    assert str(tmp_path / "s.gguf") in str(e.value) and (np.isnan(e.value.value) or e.value.value == np.float16(bad))


def test_check_scales_reads_i2_s_scale_at_n_over_4(tmp_path: Path) -> None:
    good = gb.build([], [gb.TensorSpec("w", (256, 4), GGMLType.I2_S, gb.i2_s_bytes(1024, 0.75))])
    check_scales(read_gguf(gb.write(tmp_path / "g.gguf", good)))
    bad = gb.build([], [gb.TensorSpec("w", (256, 4), GGMLType.I2_S, gb.i2_s_bytes(1024, -0.75))])
    with pytest.raises(ScaleError, match=r"'w' scale = -0.75"):
        check_scales(read_gguf(gb.write(tmp_path / "b.gguf", bad)))


@pytest.mark.parametrize("type_id", [GGMLType.TL1, GGMLType.TL2])
def test_check_scales_reads_the_tl_scale_tensor(tmp_path: Path, type_id: GGMLType) -> None:
    path = gb.write(tmp_path / "t.gguf", tl_file(type_id, scale_value=float("nan")))
    with pytest.raises(ScaleError, match="weight_scale"):
        check_scales(read_gguf(path))
    no_scale = gb.write(tmp_path / "n.gguf", tl_file(type_id, arch=ARCH_BITNET_B158, scale=False))
    with pytest.raises(ScaleError, match="1-element F32"):
        check_scales(read_gguf(no_scale))


# ----------------------------------------------------------------------------------------------------------------------
# Cross-checks against gguf-py


def reader_values(reader: gguf.GGUFReader) -> dict[str, object]:
    """gguf-py's view of the metadata (skipping its GGUF.* pseudo-fields)."""
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def assert_metadata_matches_gguf_py(ours: GGUFFile, reader: gguf.GGUFReader) -> None:
    theirs = reader_values(reader)
    assert list(theirs) == list(ours.metadata)
    for key, want in theirs.items():
        got = ours.metadata[key]
        assert [int(t) for t in reader.fields[key].types] == [int(t) for t in ours.value_types[key]], key
        got = got.tolist() if isinstance(got, np.ndarray) else got
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=0, abs=0), key
        else:
            assert got == want, key


def gguf_py_file(path: Path) -> Path:
    """A file written by gguf-py with F32, F16, Q8_0 and TQ2_0 tensors and assorted metadata."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, arch=ARCH_BITNET)
    w.add_uint32("bitnet.block_count", 2)
    w.add_float32("bitnet.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "bc"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.0])
    w.add_int64("test.i64", -(2**40))
    w.add_string("test.s", "ünïcode")
    ternary = rng.integers(-1, 2, size=(3, 512)).astype(np.float32) * 0.5
    w.add_tensor("f32", rng.standard_normal(7).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((2, 64)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("q8", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    tq = gguf.quants.quantize(ternary, gguf.GGMLQuantizationType.TQ2_0)
    w.add_tensor("tq2", tq, raw_dtype=gguf.GGMLQuantizationType.TQ2_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_matches_gguf_py_on_files_it_writes(tmp_path: Path) -> None:
    path = gguf_py_file(tmp_path / "py.gguf")
    reader = gguf.GGUFReader(path)
    with read_gguf(path) as g:
        assert_metadata_matches_gguf_py(g, reader)
        assert list(g.tensors) == [t.name for t in reader.tensors]
        for t in reader.tensors:
            info = g.tensors[t.name]
            assert (int(info.type), info.shape, info.offset, info.nbytes) == (
                int(t.tensor_type),
                tuple(int(d) for d in t.shape),
                t.data_offset,
                t.n_bytes,
            )
            np.testing.assert_array_equal(g.tensor_bytes(t.name), t.data.reshape(-1).view(np.uint8))
        check_scales(g)


def test_gguf_py_reads_what_we_write_identically(tmp_path: Path) -> None:
    """Rewriting gguf-py's file with our writer gives the same bytes."""
    src = gguf_py_file(tmp_path / "py.gguf")
    dst = tmp_path / "ours.gguf"
    with read_gguf(src) as g, GGUFWriter(dst) as w:
        for key, value in g.metadata.items():
            w.add_kv(key, value, g.value_types[key])
        for info in g.tensors.values():
            w.add_tensor(info.name, info.shape, info.type, info.nbytes)
        w.write_header()
        for info in g.tensors.values():
            w.write_tensor(info.name, g.tensor_bytes(info.name))
    assert dst.read_bytes() == src.read_bytes()


@pytest.mark.parametrize(
    "name", ["ggml-vocab-llama-spm.gguf", pytest.param("ggml-vocab-llama-bpe.gguf", marks=pytest.mark.slow)]
)
def test_vocab_files_match_gguf_py(name: str) -> None:
    path = VOCAB_DIR / name
    with read_gguf(path) as g:
        assert_metadata_matches_gguf_py(g, gguf.GGUFReader(path))


# ----------------------------------------------------------------------------------------------------------------------
# Opening: a path that is not a readable regular file is a FileAccessError naming it and why


def _bad_paths(tmp_path: Path) -> dict[Path, str]:
    """Bad input paths and the reason each error gives."""
    os.mkfifo(tmp_path / "pipe.gguf")
    (tmp_path / "plain").write_bytes(b"")
    return {
        tmp_path / "missing.gguf": "No such file or directory",
        tmp_path: "it is a directory, not a regular file",
        tmp_path / "pipe.gguf": "it is a FIFO, not a regular file",
        tmp_path / "plain" / "x.gguf": f"{tmp_path / 'plain'} is a file, not a directory",
    }


def test_read_gguf_names_a_path_it_cannot_read(tmp_path: Path) -> None:
    for path, reason in _bad_paths(tmp_path).items():
        with pytest.raises(FileAccessError) as e:
            read_gguf(path)
        assert isinstance(e.value, BitnetRefError) and isinstance(e.value, OSError)
        assert (e.value.path, e.value.action, e.value.reason) == (str(path), "read", reason)
        assert str(e.value) == f"{path}: cannot read: {reason}"
