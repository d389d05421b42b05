"""Round trips of the record schema (reports/records.py)."""

import json

import numpy as np
import pandas as pd
import pytest

from reports import records


def test_round_trip(tmp_path):
    run = records.new_run("crossval", out_root=tmp_path)
    run.write_meta({"verdict": "pass", "n": np.int64(3), "r": np.float32(0.5), "path": tmp_path, "arr": np.arange(2)})
    run.write_meta({"extra": {"nested": [1, 2]}})
    df = pd.DataFrame({"case": ["a", "b"], "layer": [0, -1], "nmse": [1e-7, float("inf")]})
    run.write_table("rows", df)
    meta, tables = records.read_run(run.path)
    assert meta["schema_version"] == records.SCHEMA_VERSION
    assert meta["kind"] == "crossval" and meta["run_id"] == run.run_id
    assert meta["verdict"] == "pass" and meta["n"] == 3 and meta["r"] == 0.5 and meta["arr"] == [0, 1]
    assert meta["extra"] == {"nested": [1, 2]} and "created" in meta
    pd.testing.assert_frame_equal(tables["rows"], df)


def test_list_runs_and_kinds(tmp_path):
    a = records.new_run("crossval", tmp_path)
    b = records.new_run("bench", tmp_path)
    assert set(records.list_runs(tmp_path)) == {a.path, b.path}
    assert records.list_runs(tmp_path, kind="bench") == [b.path]
    assert records.list_runs(tmp_path / "missing") == []


def test_read_rejects_unknown_schema(tmp_path):
    run = records.new_run("crossval", tmp_path)
    doc = json.loads((run.path / "run.json").read_text())
    doc["schema_version"] = 999
    (run.path / "run.json").write_text(json.dumps(doc))
    with pytest.raises(records.RecordError):
        records.read_run(run.path)
    with pytest.raises(records.RecordError):
        records.read_run(tmp_path)


def test_table_name_must_be_identifier(tmp_path):
    run = records.new_run("crossval", tmp_path)
    with pytest.raises(records.RecordError):
        run.write_table("../evil", pd.DataFrame())


def test_provenance_fields():
    prov = records.provenance()
    for key in ("timestamp_utc", "git_sha", "versions", "cpu_model", "cpu_flags", "hostname"):
        assert key in prov
    assert prov["versions"]["numpy"] == np.__version__
    json.dumps(prov)


def test_journal_tables_survive_a_torn_write_and_finish_as_csv(tmp_path):
    run = records.new_run("crossval", tmp_path)
    run.append_rows("cases", [{"case": "a", "verdict": "PASS", "r": 1.0}])
    run.append_rows("cases", [{"case": "b", "verdict": "ERROR", "location": "died"}])
    with open(run.path / "cases.jsonl", "a") as f:
        f.write('{"case": "c", "verd')  # a write cut short by kill -9
    _, tables = records.read_run(run.path)
    assert list(tables["cases"].case) == ["a", "b"] and set(tables["cases"].columns) == {"case", "verdict", "r",
                                                                                        "location"}
    run.finish_tables(["cases", "points"])
    assert not list(run.path.glob("*.jsonl"))
    _, tables = records.read_run(run.path)
    assert list(tables["cases"].verdict) == ["PASS", "ERROR"] and "points" in tables
    with pytest.raises(records.RecordError):
        run.append_rows("not a name", [])
