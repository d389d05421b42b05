"""HTML reports built from the recorded fixture runs in tests/fixtures/records (crossval and bench, two of each)."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from reports import html as H
from reports.__main__ import main as reports_main
from reports.records import list_runs

FIXTURES = Path(__file__).parent / "fixtures" / "records"
CHROMIUM = Path("/usr/bin/chromium")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CROSSVAL_SECTIONS = ("verdict", "cases", "details", "provenance")
BENCH_SECTIONS = ("verdict", "summary", "throughput", "roofline", "threads", "startup", "samples", "provenance")


class Page(HTMLParser):
    """What the tests look at in a page: ids, images, links, tables, the banner's text, script count."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.images: list[dict] = []
        self.links: list[str] = []
        self.tables = 0
        self.scripts = 0
        self.banner = ""
        self._in_banner = 0
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a)
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag == "table":
            self.tables += 1
        elif tag == "script":
            assert "src" not in a, "scripts must be inline (no network)"
            self.scripts += 1
        if self._in_banner or (tag == "div" and "banner" in (a.get("class") or "")):
            self._in_banner += 1

    def handle_endtag(self, tag: str) -> None:
        if self._in_banner and tag in ("div", "ul", "li", "b"):
            self._in_banner -= 1 if tag == "div" else 0

    def handle_data(self, data: str) -> None:
        if self._in_banner:
            self.banner += data


@pytest.fixture(scope="module")
def out_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the fixture records with every report and the index built."""
    root = tmp_path_factory.mktemp("out")
    shutil.copytree(FIXTURES, root, dirs_exist_ok=True)
    written, failed = H.build_all(root)
    assert not failed, failed
    assert len(written) == len(list_runs(root)) + 1
    return root


def _page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def _runs(root: Path, kind: str) -> list[Path]:
    return list_runs(root, kind)


def _check_images(page: Page) -> None:
    """Every image is an embedded PNG with alt text that PIL can decode."""
    assert page.images
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw.startswith(PNG_MAGIC)
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            assert im.size[0] > 50 and im.size[1] > 50
        assert img.get("alt") and len(img["alt"]) > 10


FAIL_CASE = "tiny-i2_s-hello-ggml-t2"
XFAIL_CASE = "tiny-bitnet-b1.58-tq2_0-hello-ggml-t2"


def test_crossval_report_sections_images_banner(out_root: Path) -> None:
    for run in _runs(out_root, "crossval"):
        page = _page(run / H.REPORT_FILE)
        assert set(CROSSVAL_SECTIONS) <= page.ids
        assert page.tables >= 3 and page.scripts == 1
        _check_images(page)
        assert "gates ggml" in page.banner
    page = _page(_runs(out_root, "crossval")[-1] / H.REPORT_FILE)
    assert "1 FAIL, 1 XFAIL, 2 PASS" in page.banner
    assert f"FAIL {FAIL_CASE}: first divergence: layer 0 ffn_down" in page.banner
    assert f"XFAIL {XFAIL_CASE}: first divergence: layer 0 ffn_sub_out" in page.banner
    assert "reason (relu2-run-as-silu): BitNet b1.58 2B-4T was trained with relu²" in page.banner
    assert {f"case-{c}" for c in (FAIL_CASE, XFAIL_CASE)} <= page.ids
    assert "crossval: pass — 2 PASS" in _page(_runs(out_root, "crossval")[0] / H.REPORT_FILE).banner


def test_crossval_heatmap_scatter_topk_provenance(out_root: Path) -> None:
    run = _runs(out_root, "crossval")[-1]
    text = (run / H.REPORT_FILE).read_text()
    page = Page(text)
    heatmaps = [i["alt"] for i in page.images if i["alt"].startswith("Heatmap of NMSE")]
    assert len(heatmaps) == 4
    assert any(FAIL_CASE in alt and "first divergence: ffn_down layer 0" in alt for alt in heatmaps)
    assert any(XFAIL_CASE in alt and "first divergence: ffn_sub_out layer 0" in alt for alt in heatmaps)
    assert sum(i["alt"].startswith("Scatter of llama.cpp logits") for i in page.images) == 4
    assert sum(i["alt"].startswith("Line plot of the Pearson correlation") for i in page.images) == 4
    assert text.count("top-k at position") == 4 and "<h4>bitnet_ref</h4>" in text and "<h4>llama.cpp</h4>" in text
    assert "provenance.cpu_model" in text and "thresholds.profiles.ggml.logits_r" in text
    older = (_runs(out_root, "crossval")[0] / H.REPORT_FILE).read_text()
    assert "Not recorded in this run: top-k tokens" in older  # optional tables absent: said, not crashed


def test_bench_report_sections_regressions(out_root: Path) -> None:
    base, slow = _runs(out_root, "bench")
    for run in (base, slow):
        page = _page(run / H.REPORT_FILE)
        assert set(BENCH_SECTIONS) <= page.ids
        _check_images(page)
        assert any("against thread count" in i["alt"] for i in page.images)
    assert "bench: pass" in _page(base / H.REPORT_FILE).banner
    banner = _page(slow / H.REPORT_FILE).banner
    assert "bench: regression" in banner and "regressions" in banner and "target" in banner


def test_index_links_every_report_and_history(out_root: Path) -> None:
    page = _page(out_root / H.INDEX_FILE)
    assert {"runs", "history"} <= page.ids
    reports = [link for link in page.links if link.endswith(H.REPORT_FILE)]
    assert len(reports) == 4
    assert all((out_root / link).is_file() for link in reports)
    alts = " ".join(i["alt"] for i in page.images)
    assert "worst logits Pearson r per weight format" in alts and "decode speed relative to llama.cpp" in alts
    _check_images(page)


def test_missing_optional_tables(tmp_path: Path) -> None:
    """A crossval run with only its case table and a bench run with only its summary still render."""
    cv, bench = list_runs(FIXTURES, "crossval")[0], list_runs(FIXTURES, "bench")[0]
    for src, keep in ((cv, "cases.csv"), (bench, "summary.csv")):
        dst = tmp_path / src.parent.name / src.name
        dst.mkdir(parents=True)
        shutil.copy(src / "run.json", dst)
        shutil.copy(src / keep, dst)
    assert reports_main([str(tmp_path)]) == 0
    for run in list_runs(tmp_path):
        text = (run / H.REPORT_FILE).read_text()
        assert "Not recorded in this run" in text
        Page(text)
    assert (tmp_path / H.INDEX_FILE).is_file()


def test_cli_single_run_and_unreadable_run(tmp_path: Path) -> None:
    src = list_runs(FIXTURES, "bench")[0]
    run = tmp_path / "bench" / src.name
    shutil.copytree(src, run)
    assert reports_main([str(run)]) == 0
    assert (run / H.REPORT_FILE).is_file() and (tmp_path / H.INDEX_FILE).is_file()
    broken = tmp_path / "bench" / "29990101T000000Z-broken-000000"
    broken.mkdir()
    (broken / "run.json").write_text('{"schema_version": 999}')
    assert reports_main([str(tmp_path)]) == 1  # reported, not fatal for the other runs
    assert "unreadable" in (tmp_path / H.INDEX_FILE).read_text()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed at /usr/bin/chromium")
def test_report_loads_in_headless_chromium(out_root: Path, tmp_path: Path) -> None:
    """The page runs its script without errors (the script marks <html data-js="ok">; errors set data-js-error)."""
    for run in (_runs(out_root, "crossval")[-1], _runs(out_root, "bench")[-1]):
        url = (run / H.REPORT_FILE).resolve().as_uri()
        args = [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000"]
        res = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr[-2000:]
        root = re.search(r"<html[^>]*>", res.stdout)
        assert root and 'data-js="ok"' in root[0] and "data-js-error" not in root[0], root
    shot = tmp_path / "bench.png"
    subprocess.run([*args, f"--screenshot={shot}", url], capture_output=True, timeout=60, check=True)
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)


def test_bench_history_follows_every_profile_of_bitnet_ref():
    """The index's decode-ratio history takes bitnet_ref's rows whether a run measured one profile or several."""
    from reports.html import _bench_history

    summary = pd.DataFrame({
        "engine": ["bitnet_ref", "llama.cpp", "bitnet_ref[ggml]", "bitnet_ref[bitnet]", "bitnet_refx"],
        "metric": ["tg128"] * 5, "case": ["2b4t/tq2_0"] * 5, "threads": [2] * 5,
        "ratio": [0.9, 1.0, 0.8, 0.95, 9.0], "median": [16.0, 18.0, 15.0, 17.0, 1.0],
    })
    hist = _bench_history([({"kind": "bench", "run_id": "r1"}, {"summary": summary})])
    assert hist["series"].tolist() == ["2b4t/tq2_0 2T", "2b4t/tq2_0 2T[ggml]", "2b4t/tq2_0 2T[bitnet]"]
    assert hist["decode_ratio"].tolist() == [0.9, 0.8, 0.95]
