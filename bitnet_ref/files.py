"""Opening files: a missing path, a directory or a FIFO is a FileAccessError naming the file, never a bare OSError."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from bitnet_ref.errors import CheckpointError, FileAccessError

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    return next((name for is_kind, name in _FILE_KINDS if is_kind(mode)), "not a regular file")


def check_readable(path: Path) -> int:
    """Size of path, which must be an existing regular file (a FIFO would block a reader forever)."""
    try:
        st = path.stat()
    except NotADirectoryError as e:
        blocker = next((p for p in reversed(path.parents) if p.is_file()), None)  # the file used as a folder
        raise FileAccessError(path, "read", e if blocker is None else f"{blocker} is a file, not a directory") from None
    except OSError as e:
        raise FileAccessError(path, "read", e) from None
    if not stat.S_ISREG(st.st_mode):
        raise FileAccessError(path, "read", f"it is {_kind(st.st_mode)}, not a regular file")
    return st.st_size


def check_writable(path: Path) -> None:
    """FileAccessError unless path's folder exists and path is absent or a regular file (checked before writing)."""
    folder = path.parent
    if not folder.is_dir():
        reason = "is not a directory" if folder.exists() else "does not exist"
        raise FileAccessError(path, "write", f"its folder {folder} {reason}")
    if path.exists() and not path.is_file():
        raise FileAccessError(path, "write", f"it is {_kind(path.stat().st_mode)}, not a regular file")


def open_file(path: str | os.PathLike, mode: str) -> BinaryIO:
    """open(path, mode) for "rb" or "wb", with every failure a FileAccessError naming the path."""
    path = Path(path)
    action = "read" if mode.startswith("r") else "write"
    if action == "read":
        check_readable(path)
    else:
        check_writable(path)
    try:
        return open(path, mode)
    except OSError as e:
        raise FileAccessError(path, action, e) from None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open_file(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_identity(path: str | os.PathLike) -> dict[str, object]:
    """sha256 and size of a model: a GGUF file's bytes, or a checkpoint folder's files (the sha256 of the lines
    `<name> <sha256>` of its regular files in name order)."""
    path = Path(path)
    if not path.is_dir():
        return {"sha256": file_sha256(path), "bytes": check_readable(path)}
    files = sorted(p for p in path.iterdir() if p.is_file())
    listing = "".join(f"{p.name} {file_sha256(p)}\n" for p in files)
    return {"sha256": hashlib.sha256(listing.encode()).hexdigest(), "bytes": sum(p.stat().st_size for p in files),
            "files": [p.name for p in files]}


def read_json_object(path: Path) -> dict:
    """A JSON object from a checkpoint file (config.json, tokenizer.json, an index); one-line errors when it is
    unreadable, not UTF-8 JSON or not an object."""
    check_readable(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, "JSON", str(e), "a valid UTF-8 JSON document") from None
    if not isinstance(value, dict):
        raise CheckpointError(path, "JSON", type(value).__name__, "an object")
    return value


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A unique temporary path beside path, renamed to path when the block succeeds and removed in any case."""
    check_writable(path)  # before drawing a whole model that could not be put in place
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise FileAccessError(path, "write", e) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a model file is an ordinary readable file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
