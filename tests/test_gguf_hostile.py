"""Hostile GGUF files: each failure class gives its typed error naming the field; fuzzed bytes never escape it."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import gguf_builders as gb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitnet_ref.constants import ARCH_BITNET, KEY_ALIGNMENT, KEY_ARCHITECTURE, GGMLType, ValueType
from bitnet_ref.errors import (
    AlignmentError,
    BadMagicError,
    CountError,
    DuplicateError,
    GGUFError,
    ScaleError,
    TensorBoundsError,
    TensorShapeError,
    TruncatedError,
    UnknownTypeError,
    UnsupportedVersionError,
    ValueKindError,
)
from bitnet_ref.gguf_reader import read_gguf
from bitnet_ref.verify import check_scales

V = ValueType
T = gb.TensorSpec
F32 = GGMLType.F32
ARCH = gb.kv(KEY_ARCHITECTURE, V.STRING, ARCH_BITNET)
HUGE = 2**60


def one_f32(name: str = "w", n: int = 4, **kw: object) -> T:
    """An F32 tensor of n elements."""
    return T(name, (n,), F32, gb.f32_bytes(range(n)), **kw)


def truncated_in_header() -> bytes:
    full = gb.build([ARCH, gb.kv("k", V.UINT64, 7)], [one_f32()])
    return full[: 24 + len(ARCH) + 10]  # header + first KV + the start of the second


def outside_the_file() -> bytes:
    full = gb.build([ARCH], [one_f32(n=64)])
    return full[:-100]


def nested(depth: int) -> bytes:
    """An array nested depth levels deep, innermost an empty u8 array."""
    body = gb.u32(V.UINT8) + gb.u64(0)
    for _ in range(depth - 1):
        body = gb.u32(V.ARRAY) + gb.u64(1) + body
    return gb.kv("deep", V.ARRAY, raw=body)


def scale_file(data: bytes, type_id: int, shape: tuple[int, ...], *extra: T) -> bytes:
    return gb.build([ARCH], [T("w", shape, type_id, data), *extra])


def tl2_with_scale(value: float) -> bytes:
    return scale_file(bytes(256), GGMLType.TL2, (256, 4), T("w_scale", (1,), F32, gb.f32_bytes([value])))


# (id, file bytes, error class, a substring of the error's field, whether check_scales is needed to see it)
CORPUS: list[tuple[str, Callable[[], bytes], type[GGUFError], str, bool]] = [
    ("bad-magic", lambda: b"GGML" + gb.build([ARCH])[4:], BadMagicError, "magic", False),
    ("empty-file", lambda: b"", BadMagicError, "magic", False),
    ("version-1", lambda: gb.build([ARCH], version=1), UnsupportedVersionError, "version", False),
    ("version-4", lambda: gb.build([ARCH], version=4), UnsupportedVersionError, "version", False),
    ("big-endian", lambda: gb.build([ARCH], version=3 << 24), UnsupportedVersionError, "version", False),
    ("truncated-header", truncated_in_header, TruncatedError, "k", False),
    ("truncated-counts", lambda: gb.build([ARCH])[:12], TruncatedError, "tensor_count", False),
    ("huge-kv-count", lambda: gb.build([ARCH], n_kv=HUGE), CountError, "kv_count", False),
    ("huge-tensor-count", lambda: gb.build([ARCH], n_tensors=HUGE), CountError, "tensor_count", False),
    ("huge-string", lambda: gb.build([gb.kv("s", V.STRING, raw=gb.u64(HUGE))]), CountError, "s", False),
    ("huge-key", lambda: gb.build([gb.u64(HUGE) + b"k"]), CountError, "kv #0 key", False),
    (
        "huge-array",
        lambda: gb.build([gb.kv("a", V.ARRAY, raw=gb.u32(V.UINT32) + gb.u64(HUGE))]),
        CountError,
        "a (array count)",
        False,
    ),
    (
        "huge-string-array",
        lambda: gb.build([gb.kv("a", V.ARRAY, raw=gb.u32(V.STRING) + gb.u64(HUGE))]),
        CountError,
        "a (array count)",
        False,
    ),
    (
        "huge-string-in-array",
        lambda: gb.build([gb.kv("a", V.ARRAY, raw=gb.u32(V.STRING) + gb.u64(1) + gb.u64(HUGE))]),
        CountError,
        "a[0]",
        False,
    ),
    ("deep-nesting", lambda: gb.build([nested(50)]), CountError, "deep", False),
    ("duplicate-key", lambda: gb.build([ARCH, ARCH]), DuplicateError, "kv #1 key", False),
    ("duplicate-tensor", lambda: gb.build([ARCH], [one_f32(), one_f32()]), DuplicateError, "tensor #1 name", False),
    ("alignment-48", lambda: gb.build([gb.kv(KEY_ALIGNMENT, V.UINT32, 48)]), AlignmentError, KEY_ALIGNMENT, False),
    ("alignment-0", lambda: gb.build([gb.kv(KEY_ALIGNMENT, V.UINT32, 0)]), AlignmentError, KEY_ALIGNMENT, False),
    ("alignment-u64", lambda: gb.build([gb.kv(KEY_ALIGNMENT, V.UINT64, 32)]), AlignmentError, KEY_ALIGNMENT, False),
    (
        "unaligned-offset",
        lambda: gb.build([ARCH], [one_f32("a"), one_f32("b", offset=48)]),
        AlignmentError,
        "'b' offset",
        False,
    ),
    ("outside-the-file", outside_the_file, TensorBoundsError, "'w' data", False),
    (
        "far-offset",
        lambda: gb.build([ARCH], [T("w", (4,), F32, b"", offset=2**62)]),
        TensorBoundsError,
        "'w' data",
        False,
    ),
    (
        "overlap",
        lambda: gb.build([ARCH], [one_f32("a", n=16), one_f32("b", offset=32)]),
        TensorBoundsError,
        "'a' data",
        False,
    ),
    ("unknown-value-type", lambda: gb.build([gb.kv("x", 13, raw=b"\0" * 8)]), UnknownTypeError, "x", False),
    (
        "unknown-array-type",
        lambda: gb.build([gb.kv("x", V.ARRAY, raw=gb.u32(99) + gb.u64(0))]),
        UnknownTypeError,
        "x (array element type)",
        False,
    ),
    ("unknown-tensor-type", lambda: gb.build([ARCH], [T("w", (32,), 2, bytes(18))]), UnknownTypeError, "'w'", False),
    ("i8_s-in-file", lambda: gb.build([ARCH], [T("w", (32,), 37, bytes(32))]), UnknownTypeError, "'w' type", False),
    ("mxfp4", lambda: gb.build([ARCH], [T("w", (32,), 39, bytes(17))]), UnknownTypeError, "'w' type", False),
    ("five-dims", lambda: gb.build([ARCH], [T("w", (1, 1, 1, 1, 1), F32, bytes(4))]), CountError, "'w' n_dims", False),
    ("zero-dim", lambda: gb.build([ARCH], [T("w", (4, 0), F32, bytes(32))]), TensorShapeError, "'w' ne[1]", False),
    ("negative-dim", lambda: gb.build([ARCH], [T("w", (2**63,), F32, b"")]), TensorShapeError, "'w' ne[0]", False),
    (
        "dims-overflow",
        lambda: gb.build([ARCH], [T("w", (2**40, 2**40), F32, b"")]),
        TensorShapeError,
        "'w' shape",
        False,
    ),
    ("block-size", lambda: gb.build([ARCH], [T("w", (33,), GGMLType.Q8_0, bytes(64))]), TensorShapeError, "'w'", False),
    (
        "extent-past-next",
        lambda: gb.build([ARCH], [T("a", (16,), F32, bytes(32)), one_f32("b", offset=32)]),
        TensorBoundsError,
        "'a' data",
        False,
    ),
    ("utf8-key", lambda: gb.build([gb.kv(b"k\xff", V.UINT8, 1)]), ValueKindError, "kv #0 key", False),
    ("utf8-value", lambda: gb.build([gb.kv("s", V.STRING, raw=gb.string(b"\xc3("))]), ValueKindError, "s", False),
    (
        "utf8-token",
        lambda: gb.build(
            [gb.kv("t", V.ARRAY, raw=gb.u32(V.STRING) + gb.u64(2) + gb.string("ok") + gb.string(b"\xed\xa0\x80"))]
        ),
        ValueKindError,
        "t[1]",
        False,
    ),
    ("utf8-tensor-name", lambda: gb.build([ARCH], [one_f32(b"w\x80")]), ValueKindError, "tensor #0 name", False),
    ("bool-2", lambda: gb.build([gb.kv("b", V.BOOL, raw=b"\x02")]), ValueKindError, "b", False),
    (
        "tq2_0-nan-scale",
        lambda: scale_file(gb.tq_blocks(GGMLType.TQ2_0, [1.0, float("nan")]), GGMLType.TQ2_0, (512,)),
        ScaleError,
        "'w' block 1",
        True,
    ),
    (
        "tq1_0-negative-scale",
        lambda: scale_file(gb.tq_blocks(GGMLType.TQ1_0, [-1.0]), GGMLType.TQ1_0, (256,)),
        ScaleError,
        "'w' block 0",
        True,
    ),
    (
        "i2_s-inf-scale",
        lambda: scale_file(gb.i2_s_bytes(512, float("inf")), GGMLType.I2_S, (128, 4)),
        ScaleError,
        "'w' scale",
        True,
    ),
    ("tl2-negative-scale", lambda: tl2_with_scale(-2.0), ScaleError, "'w_scale'", True),
]


@pytest.mark.parametrize(("case", "make", "error", "field", "scales"), CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_file_raises_its_typed_error(
    tmp_path: Path, case: str, make: Callable[[], bytes], error: type[GGUFError], field: str, scales: bool
) -> None:
    path = gb.write(tmp_path / f"{case}.gguf", make())
    with pytest.raises(GGUFError) as e:
        check_scales(read_gguf(path)) if scales else read_gguf(path)
    assert type(e.value) is error, f"{case}: got {type(e.value).__name__}: {e.value}"
    assert field in e.value.field, f"{case}: field {e.value.field!r} does not name {field!r}"
    assert str(path) in str(e.value) and e.value.expected, str(e.value)


def test_corpus_covers_every_failure_class() -> None:
    assert len(CORPUS) >= 20
    assert {c[2] for c in CORPUS} == {
        AlignmentError,
        BadMagicError,
        CountError,
        DuplicateError,
        ScaleError,
        TensorBoundsError,
        TensorShapeError,
        TruncatedError,
        UnknownTypeError,
        UnsupportedVersionError,
        ValueKindError,
    }


@pytest.mark.parametrize("field", ["tensor_count", "kv_count"])
def test_huge_counts_fail_fast_without_allocating(tmp_path: Path, field: str) -> None:
    counts = {"n_tensors": HUGE} if field == "tensor_count" else {"n_kv": HUGE}
    path = gb.write(tmp_path / "huge.gguf", gb.build([ARCH], **counts))
    tracemalloc.start()
    try:
        with pytest.raises(CountError, match=field):
            read_gguf(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"peak {peak} bytes while refusing a count of {HUGE}"


def test_truncation_at_every_byte_is_a_typed_error(tmp_path: Path) -> None:
    """Every prefix of a valid file fails with a GGUFError, except those that cut only the final padding."""
    full = gb.small_valid_file()
    last_data_end = len(full) - gb.pad(2 * 66) + 2 * 66  # the TQ2_0 tensor is last; its padding follows
    path = tmp_path / "cut.gguf"
    for n in range(len(full)):
        path.write_bytes(full[:n])
        try:
            read_gguf(path).close()
        except GGUFError:
            continue
        assert n >= last_data_end, f"a {n}-byte prefix parsed"


def parse_outcome(path: Path, data: bytes) -> str:
    """'ok' or the GGUFError class name; any other exception propagates and fails the test."""
    path.write_bytes(data)
    try:
        with read_gguf(path) as g:
            check_scales(g)
    except GGUFError as e:
        return type(e).__name__
    return "ok"


FUZZ = settings(
    max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8))
def test_random_byte_corruption_is_ok_or_typed(tmp_path: Path, edits: list[tuple[int, int]]) -> None:
    data = bytearray(gb.small_valid_file())
    for pos, byte in edits:
        data[pos % len(data)] = byte
    parse_outcome(tmp_path / "fuzz.gguf", bytes(data))


@FUZZ
@given(
    cut=st.integers(0, 10**6),
    junk=st.binary(max_size=16),
    counts=st.sampled_from([None, 0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1]),
)
def test_truncation_with_junk_and_hostile_counts_is_ok_or_typed(
    tmp_path: Path, cut: int, junk: bytes, counts: int | None
) -> None:
    data = bytearray(gb.small_valid_file())
    if counts is not None:
        data[16:24] = gb.u64(counts)  # n_kv
    data = data[: cut % (len(data) + 1)] + junk
    parse_outcome(tmp_path / "cut.gguf", bytes(data))


@FUZZ
@given(field=st.sampled_from(range(0, 24, 4)), value=st.sampled_from([0, 1, 0xFF, 0xFFFF_FFFF, 0x8000_0000]))
def test_corrupt_header_words_are_ok_or_typed(tmp_path: Path, field: int, value: int) -> None:
    data = bytearray(gb.small_valid_file())
    data[field : field + 4] = gb.u32(value)
    parse_outcome(tmp_path / "hdr.gguf", bytes(data))


def test_every_single_byte_flip_in_the_header_is_ok_or_typed(tmp_path: Path) -> None:
    """Exhaustive: each header byte set to 0x00, 0x80 and 0xFF."""
    data = gb.small_valid_file()
    with read_gguf(gb.write(tmp_path / "ok.gguf", data)) as g:
        header_end = g.data_start
    outcomes = set()
    for pos, byte in itertools.product(range(header_end), (0x00, 0x80, 0xFF)):
        bad = bytearray(data)
        bad[pos] = byte
        outcomes.add(parse_outcome(tmp_path / "flip.gguf", bytes(bad)))
    assert len(outcomes) > 5, outcomes  # many different classes are exercised
