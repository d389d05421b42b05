"""GGUF writer: round trips of every value type, byte-exact encoding, type inference, tight offsets, fork types."""

from __future__ import annotations

import os
from pathlib import Path

import gguf_builders as gb
import numpy as np
import pytest

from bitnet_ref.constants import (
    ARCH_BITNET_B158,
    KEY_ALIGNMENT,
    KEY_ARCHITECTURE,
    GGMLType,
    ValueType,
)
from bitnet_ref.errors import (
    AlignmentError,
    DuplicateError,
    FileAccessError,
    GGUFError,
    TensorShapeError,
    UnknownTypeError,
    ValueKindError,
)
from bitnet_ref.formats import get as get_format
from bitnet_ref.gguf_reader import read_gguf
from bitnet_ref.gguf_writer import GGUFWriter
from bitnet_ref.verify import check_scales

V = ValueType

# One value per type path, each exactly representable so that a round trip compares with ==.
EVERY_VALUE = {
    "t.u8": (255, (V.UINT8,)),
    "t.i8": (-128, (V.INT8,)),
    "t.u16": (65535, (V.UINT16,)),
    "t.i16": (-32768, (V.INT16,)),
    "t.u32": (2**32 - 1, (V.UINT32,)),
    "t.i32": (-(2**31), (V.INT32,)),
    "t.f32": (0.15625, (V.FLOAT32,)),
    "t.bool": (True, (V.BOOL,)),
    "t.false": (False, (V.BOOL,)),
    "t.str": ("héllo ∑ 🙂", (V.STRING,)),
    "t.empty_str": ("", (V.STRING,)),
    "t.u64": (2**64 - 1, (V.UINT64,)),
    "t.i64": (-(2**63), (V.INT64,)),
    "t.f64": (1.0000000000000002, (V.FLOAT64,)),
    "t.arr_u8": (np.array([0, 7, 255], np.uint8), (V.ARRAY, V.UINT8)),
    "t.arr_i8": (np.array([-1, 2], np.int8), (V.ARRAY, V.INT8)),
    "t.arr_u16": (np.array([1, 65535], np.uint16), (V.ARRAY, V.UINT16)),
    "t.arr_i16": (np.array([-3], np.int16), (V.ARRAY, V.INT16)),
    "t.arr_u32": (np.arange(5, dtype=np.uint32), (V.ARRAY, V.UINT32)),
    "t.arr_i32": (np.array([-5, 5], np.int32), (V.ARRAY, V.INT32)),
    "t.arr_f32": (np.array([0.5, -2.25], np.float32), (V.ARRAY, V.FLOAT32)),
    "t.arr_bool": (np.array([True, False, True]), (V.ARRAY, V.BOOL)),
    "t.arr_u64": (np.array([2**64 - 1], np.uint64), (V.ARRAY, V.UINT64)),
    "t.arr_i64": (np.array([-(2**63)], np.int64), (V.ARRAY, V.INT64)),
    "t.arr_f64": (np.array([1e300], np.float64), (V.ARRAY, V.FLOAT64)),
    "t.arr_str": (["a", "", "ü b"], (V.ARRAY, V.STRING)),
    "t.arr_empty_u32": (np.zeros(0, np.uint32), (V.ARRAY, V.UINT32)),
    "t.arr_empty_str": ([], (V.ARRAY, V.STRING)),
    "t.nested_i32": ([np.array([1, 2], np.int32), np.array([3], np.int32)], (V.ARRAY, V.ARRAY, V.INT32)),
    "t.nested_str": ([["x", "y"], []], (V.ARRAY, V.ARRAY, V.STRING)),
    "t.nested3": ([[np.array([1.5], np.float32)]], (V.ARRAY, V.ARRAY, V.ARRAY, V.FLOAT32)),
    "t.nested_mixed": ([np.array([1], np.int8), ["s"]], (V.ARRAY, V.ARRAY)),
    "t.nested_empty": ([], (V.ARRAY, V.ARRAY)),
}


def assert_same_value(got: object, want: object, key: str) -> None:
    """Deep equality of metadata values: arrays by dtype and content, lists element-wise."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), key
        assert got.dtype == want.dtype, key
        np.testing.assert_array_equal(got, want, err_msg=key)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), key
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_value(g, w, f"{key}[{i}]")
    else:
        assert type(got) is type(want) and got == want, (key, got, want)


def write_all(path: Path, values: dict, *, version: int = 3, alignment: int = 32) -> Path:
    """Write every value with explicit types, plus one tensor so that the data section exists."""
    with GGUFWriter(path, alignment=alignment, version=version) as w:
        for key, (value, types) in values.items():
            w.add_kv(key, value, types)
        w.add_tensor("w", (4,), GGMLType.F32)
        w.write_header()
        w.write_tensor("w", np.arange(4, dtype=np.float32))
    return path


@pytest.mark.parametrize("version", [2, 3])
def test_round_trip_every_value_type(tmp_path: Path, version: int) -> None:
    with read_gguf(write_all(tmp_path / "all.gguf", EVERY_VALUE, version=version)) as g:
        assert g.version == version
        for key, (value, types) in EVERY_VALUE.items():
            assert g.value_types[key] == types, key
            assert_same_value(g.metadata[key], value, key)
        np.testing.assert_array_equal(g.tensor_bytes("w").view(np.float32), np.arange(4))


def test_writer_matches_spec_encoder_byte_for_byte(tmp_path: Path) -> None:
    """The writer's bytes equal the independent builder's for the same KVs and tensor."""
    ours = write_all(tmp_path / "w.gguf", {k: EVERY_VALUE[k] for k in ("t.u8", "t.str", "t.arr_str", "t.arr_f32")})
    kvs = [
        gb.kv("t.u8", V.UINT8, 255),
        gb.kv("t.str", V.STRING, "héllo ∑ 🙂"),
        gb.kv("t.arr_str", V.ARRAY, ["a", "", "ü b"], elem=V.STRING),
        gb.kv("t.arr_f32", V.ARRAY, [0.5, -2.25], elem=V.FLOAT32),
    ]
    spec = gb.build(kvs, [gb.TensorSpec("w", (4,), GGMLType.F32, gb.f32_bytes(range(4)))])
    assert ours.read_bytes() == spec


def test_round_trip_of_what_was_read_is_identical(tmp_path: Path) -> None:
    """metadata + value_types carry everything needed to rewrite a file unchanged."""
    first = write_all(tmp_path / "a.gguf", EVERY_VALUE)
    with read_gguf(first) as g:
        again = write_all(tmp_path / "b.gguf", {k: (g.metadata[k], g.value_types[k]) for k in g.metadata})
    assert again.read_bytes() == first.read_bytes()


@pytest.mark.parametrize(
    "value, types",
    [
        ("s", (V.STRING,)),
        (True, (V.BOOL,)),
        (7, (V.INT32,)),
        (2**40, (V.INT64,)),
        (2**63, (V.UINT64,)),
        (0.1, (V.FLOAT32,)),
        (np.float64(0.1), (V.FLOAT64,)),
        (np.uint16(3), (V.UINT16,)),
        (np.arange(3, dtype=np.int16), (V.ARRAY, V.INT16)),
        (["a", "b"], (V.ARRAY, V.STRING)),
        ([1, 2, 2**40], (V.ARRAY, V.INT64)),
        ([1, 2.5], (V.ARRAY, V.FLOAT32)),
        ([True, False], (V.ARRAY, V.BOOL)),
        ([[1, 2], [3]], (V.ARRAY, V.ARRAY, V.INT32)),
    ],
)
def test_writer_infers_types(tmp_path: Path, value: object, types: tuple) -> None:
    with GGUFWriter(tmp_path / "i.gguf") as w:
        w.add_kv("k", value)
    assert read_gguf(tmp_path / "i.gguf").value_types["k"] == types


@pytest.mark.parametrize(
    "value, types",
    [
        (256, (V.UINT8,)),
        (-1, (V.UINT32,)),
        (1.5, (V.INT32,)),
        ("x", (V.INT32,)),
        (7, (V.STRING,)),
        ([1, 2], (V.INT32,)),
        ([], None),
        (np.zeros(2, np.float16), None),
        ([1, "a"], None),
        (object(), None),
    ],
)
def test_writer_refuses_values_that_do_not_fit(tmp_path: Path, value: object, types: tuple | None) -> None:
    with GGUFWriter(tmp_path / "bad.gguf") as w, pytest.raises(ValueKindError) as e:
        w.add_kv("k", value, types)
    assert e.value.field.startswith("k") and "bad.gguf" in str(e.value)


@pytest.mark.parametrize("alignment", [32, 64, None])
def test_alignment_and_tight_offsets(tmp_path: Path, alignment: int | None) -> None:
    shapes = [((3,), GGMLType.F32), ((256, 3), GGMLType.TQ2_0), ((32, 2), GGMLType.Q8_0), ((5,), GGMLType.F16)]
    path = tmp_path / "a.gguf"
    with GGUFWriter(path, **({} if alignment is None else {"alignment": alignment})) as w:
        for i, (shape, typ) in enumerate(shapes):
            w.add_tensor(f"t{i}", shape, typ)
        w.write_header()
        for i, (shape, typ) in enumerate(shapes):
            w.write_tensor(f"t{i}", bytes([i + 1]) * get_format(typ).nbytes(shape))
    expected = alignment or 32
    with read_gguf(path) as g:
        assert g.alignment == expected
        assert (KEY_ALIGNMENT in g.metadata) == (expected != 32)
        assert g.data_start % expected == 0
        infos = list(g.tensors.values())
        assert infos[0].offset == g.data_start
        for prev, cur in zip(infos, infos[1:], strict=False):
            assert cur.offset == prev.offset + gb.pad(prev.nbytes, expected)
        for i, info in enumerate(infos):
            assert set(g.tensor_bytes(info.name).tolist()) == {i + 1}
    assert path.stat().st_size % expected == 0


# ----------------------------------------------------------------------------------------------------------------------
# bitnet.cpp types, misuse, streaming


def test_writer_handles_fork_types_and_requires_tl_scale_tensors(tmp_path: Path) -> None:
    path = tmp_path / "fork.gguf"
    with GGUFWriter(path) as w:
        w.add_kv(KEY_ARCHITECTURE, ARCH_BITNET_B158)
        for name, typ in [("a", GGMLType.I2_S), ("b", GGMLType.TL1), ("c", GGMLType.TL2)]:
            w.add_tensor(name, (256, 4), typ)
            if typ != GGMLType.I2_S:
                w.add_tensor(name + "_scale", () if typ == GGMLType.TL2 else (1,), GGMLType.F32)  # 0-d, as converted
        w.write_header()
        payloads = {
            "a": gb.i2_s_bytes(1024, 0.25),
            "b": bytes(get_format(GGMLType.TL1).nbytes((256, 4))),
            "b_scale": gb.f32_bytes([0.25]),
            "c": bytes(get_format(GGMLType.TL2).nbytes((256, 4))),
            "c_scale": gb.f32_bytes([0.25]),
        }
        for name, payload in payloads.items():
            w.write_tensor(name, payload)
    g = read_gguf(path)
    assert [t.type for t in g.tensors.values()] == [36, 38, 0, 39, 0]
    assert g.tensors["c_scale"].shape == () and g.tensors["c_scale"].n_elements == 1
    check_scales(g)
    with pytest.raises(TensorShapeError, match="c_scale"), GGUFWriter(tmp_path / "bad.gguf") as w:
        w.add_tensor("c", (256, 4), GGMLType.TL2)
        w.write_header()


@pytest.mark.parametrize("type_id", [GGMLType.I8_S, GGMLType.Q8_K, 2, 12, 99])
def test_writer_refuses_types_without_a_format(tmp_path: Path, type_id: int) -> None:
    with GGUFWriter(tmp_path / "x.gguf") as w, pytest.raises(UnknownTypeError, match="'w'"):
        w.add_tensor("w", (256,), type_id)


def test_writer_misuse_is_reported(tmp_path: Path) -> None:
    w = GGUFWriter(tmp_path / "m.gguf")
    w.add_kv("k", 1)
    with pytest.raises(DuplicateError, match="'k'"):
        w.add_kv("k", 2)
    w.add_tensor("a", (4,), GGMLType.F32)
    w.add_tensor("b", (4,), GGMLType.F32)
    with pytest.raises(DuplicateError, match="'a'"):
        w.add_tensor("a", (4,), GGMLType.F32)
    with pytest.raises(TensorShapeError, match="nbytes"):
        w.add_tensor("c", (4,), GGMLType.F32, nbytes=12)
    with pytest.raises(TensorShapeError, match="block size"):
        w.add_tensor("d", (33,), GGMLType.Q8_0)
    with pytest.raises(GGUFError, match="after write_header"):
        w.write_tensor("a", bytes(16))
    w.write_header()
    with pytest.raises(GGUFError, match="before write_header"):
        w.add_kv("late", 1)
    with pytest.raises(GGUFError, match="next tensor in add order"):
        w.write_tensor("b", bytes(16))
    with pytest.raises(TensorShapeError, match="16 bytes"):
        w.write_tensor("a", bytes(15))
    w.write_tensor("a", bytes(16))
    with pytest.raises(GGUFError, match="'b'"):
        w.close()
    for bad in (0, 48, 2**32):
        with pytest.raises(AlignmentError):
            GGUFWriter(tmp_path / "n.gguf", alignment=bad)
    with GGUFWriter(tmp_path / "al.gguf", alignment=64) as w2, pytest.raises(AlignmentError):
        w2.add_kv(KEY_ALIGNMENT, 32, V.UINT32)


def test_write_tensor_chunks_streams_a_tensor_in_pieces(tmp_path: Path) -> None:
    rows = np.arange(64, dtype=np.float16).reshape(8, 8)
    with GGUFWriter(tmp_path / "c.gguf") as w:
        w.add_tensor("emb", (8, 8), GGMLType.F16)
        w.write_header()
        w.write_tensor_chunks("emb", (rows[i : i + 3] for i in range(0, 8, 3)))
    g = read_gguf(tmp_path / "c.gguf")
    np.testing.assert_array_equal(g.tensor_bytes("emb").view(np.float16).reshape(8, 8), rows)
    for chunks in ([bytes(4)], [bytes(4), bytes(8)]):
        with pytest.raises(TensorShapeError, match="'n'"), GGUFWriter(tmp_path / "bad.gguf") as w:
            w.add_tensor("n", (2,), GGMLType.F32)
            w.write_header()
            w.write_tensor_chunks("n", chunks)


def test_writing_a_128k_vocabulary_is_fast(tmp_path: Path) -> None:
    tokens = [f"tok{i}\u0120x" for i in range(128_256)]
    types = np.ones(len(tokens), np.int32)
    with GGUFWriter(tmp_path / "v.gguf") as w:
        w.add_kv("tokenizer.ggml.tokens", tokens)
        w.add_kv("tokenizer.ggml.token_type", types)
    g = read_gguf(tmp_path / "v.gguf")
    assert g.metadata["tokenizer.ggml.tokens"] == tokens
    np.testing.assert_array_equal(g.metadata["tokenizer.ggml.token_type"], types)


# ----------------------------------------------------------------------------------------------------------------------
# Opening: a path that is not a writable regular file is a FileAccessError naming it and why


def test_writer_names_a_path_it_cannot_create(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.gguf")
    (tmp_path / "plain").write_bytes(b"")
    cases = {
        tmp_path / "no-dir" / "x.gguf": f"its folder {tmp_path / 'no-dir'} does not exist",
        tmp_path / "plain" / "x.gguf": f"its folder {tmp_path / 'plain'} is not a directory",
        tmp_path: "it is a directory, not a regular file",
        tmp_path / "pipe.gguf": "it is a FIFO, not a regular file",
    }
    for path, reason in cases.items():
        with pytest.raises(FileAccessError) as e:
            GGUFWriter(path)
        assert str(e.value) == f"{path}: cannot write: {reason}"
