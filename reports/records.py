"""The record schema: one folder per run, `out/<kind>/<run-id>/` with run.json and CSV tables.

run.json holds `schema_version`, `kind`, `run_id` and whatever the producer writes (provenance, numerics,
thresholds, verdict); every table is `<name>.csv`. Records from many machines merge by concatenating tables.

A producer that records as it goes appends rows to `<name>.jsonl` journals (one JSON object a line, flushed and
synced per append) and turns them into the CSV tables when it finishes. A run killed before that keeps its journals;
read_run reads them as tables (a torn last line is dropped), so a report can be built from an unfinished run.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import socket
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1
META_FILE = "run.json"
TABLE_SUFFIX = ".csv"
JOURNAL_SUFFIX = ".jsonl"
PACKAGES = ("bitnet-ref", "numpy", "numba", "pandas", "gguf", "llama_cpp_python", "rich")


class RecordError(ValueError):
    """A run folder is missing run.json or has an unknown schema version."""


def _jsonable(value: object) -> object:
    """json.dump fallback for numpy scalars/arrays, paths and sets."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


@dataclass
class RunDir:
    """One run's folder; write_meta merges into run.json, write_table writes <name>.csv."""

    path: Path
    kind: str
    run_id: str
    meta: dict = field(default_factory=dict)

    def write_meta(self, meta: dict) -> None:
        """Merge `meta` into run.json and rewrite it atomically."""
        self.meta.update(meta)
        doc = {"schema_version": SCHEMA_VERSION, "kind": self.kind, "run_id": self.run_id, **self.meta}
        tmp = self.path / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2, default=_jsonable, allow_nan=True) + "\n")
        tmp.replace(self.path / META_FILE)

    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        """Write one table as <name>.csv and return its path."""
        if not name.isidentifier():
            raise RecordError(f"table name {name!r} must be an identifier")
        out = self.path / (name + TABLE_SUFFIX)
        df.to_csv(out, index=False)
        return out

    def append_rows(self, name: str, rows: list[dict]) -> None:
        """Append rows to the <name>.jsonl journal and sync it to disk (each row one line)."""
        if not name.isidentifier():
            raise RecordError(f"table name {name!r} must be an identifier")
        text = "".join(json.dumps(r, default=_jsonable, allow_nan=True) + "\n" for r in rows)
        with open(self.path / (name + JOURNAL_SUFFIX), "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def finish_tables(self, names: list[str]) -> None:
        """Write every named table as CSV from its journal (an empty table when it has none) and drop the journals."""
        for name in names:
            journal = self.path / (name + JOURNAL_SUFFIX)
            self.write_table(name, pd.DataFrame(read_journal(journal)))
            journal.unlink(missing_ok=True)


def read_journal(path: Path) -> list[dict]:
    """The rows of a .jsonl journal; a line that does not parse (a write cut short by a kill) is dropped."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, collision-resistant run id: UTC time, host and a random suffix."""
    now = now or datetime.now(UTC)
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:24]
    return f"{now:%Y%m%dT%H%M%SZ}-{host}-{secrets.token_hex(3)}"


def new_run(kind: str, out_root: str | Path = "out") -> RunDir:
    """Create out_root/<kind>/<run-id>/ and write a first run.json with the creation time."""
    run_id = new_run_id()
    path = Path(out_root) / kind / run_id
    path.mkdir(parents=True, exist_ok=False)
    run = RunDir(path=path, kind=kind, run_id=run_id)
    run.write_meta({"created": datetime.now(UTC).isoformat()})
    return run


def read_run(path: str | Path) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Read a run folder: (run.json as a dict, {table name: DataFrame})."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise RecordError(f"{path}: no {META_FILE}")
    meta = json.loads(meta_path.read_text())
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise RecordError(f"{meta_path}: schema_version {meta.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    tables = {p.stem: _read_table(p) for p in sorted(path.glob("*" + TABLE_SUFFIX))}
    for p in sorted(path.glob("*" + JOURNAL_SUFFIX)):
        tables.setdefault(p.stem, pd.DataFrame(read_journal(p)))
    return meta, tables


def _read_table(path: Path) -> pd.DataFrame:
    """One CSV table; a table written with no rows (and so no columns) reads as an empty frame."""
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def list_runs(out_root: str | Path = "out", kind: str | None = None) -> list[Path]:
    """Every run folder under out_root (optionally of one kind), oldest first by run id."""
    root = Path(out_root)
    pattern = f"{kind}/*/{META_FILE}" if kind else f"*/*/{META_FILE}"
    return sorted((p.parent for p in root.glob(pattern)), key=lambda p: p.name)


def _git_info() -> dict:
    """Git state of the source tree (when run from a checkout), else of the working directory."""
    for repo in (Path(__file__).resolve().parents[1], Path.cwd()):
        info = _git_sha(repo)
        if info["git_sha"]:
            return info
    return {"git_sha": None, "git_dirty": None}


def _git_sha(repo: Path) -> dict:
    """HEAD sha and whether the work tree has changes (read-only git calls)."""

    def git(*args: str) -> str:
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # status must not even refresh the index
        res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, env=env)
        return res.stdout.strip() if res.returncode == 0 else ""

    sha = git("rev-parse", "HEAD")
    return {"git_sha": sha or None, "git_dirty": bool(git("status", "--porcelain")) if sha else None}


def _cpu() -> dict:
    """CPU model name and flags from /proc/cpuinfo (Linux), else platform strings."""
    info = {"cpu_model": platform.processor() or platform.machine(), "cpu_flags": [], "cpu_count": os.cpu_count()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                info["cpu_model"] = value.strip()
            elif key.strip() in ("flags", "Features") and not info["cpu_flags"]:
                info["cpu_flags"] = value.split()
    return info


def _versions() -> dict:
    """Installed versions of the packages that decide results."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance() -> dict:
    """Where and with what a run was made: time, git, package versions, CPU, host."""
    now = datetime.now(UTC)
    return {
        "timestamp_utc": now.isoformat(),
        "timestamp_local": now.astimezone().isoformat(),
        **_git_info(),
        "versions": _versions(),
        **_cpu(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
    }
