"""``report --figures``: every figure of the page as PDF, SVG and PNG sized for a two-column paper,
every table as CSV and LaTeX holding the store's numbers, written so that a folder is never left
half-done. The store is tests/test_report.py's, cut to one model's rank-8 runs (every section,
few panels: the fast tier stays fast)."""

from __future__ import annotations

import csv
import io
import math
import re
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from relevance_lens.cli import app
from relevance_lens.errors import InputError
from relevance_lens.report import paper
from relevance_lens.report.figures import PAPER, slug
from relevance_lens.report.page import read_rows, write_report
from relevance_lens.store import Store
from test_report import synthetic_rows

EV = "dev-top-10-40-queries"
#: One stem per figure of the page: its section's name, the metric, the eval set.
FIGURES = {
    f"checkpoints-ndcg10-{EV}",
    f"ranks-ndcg10-{EV}",
    f"targets-ndcg10-{EV}",
    f"drop-layer-role-ndcg10-{EV}",
    f"window-ndcg10-{EV}",
    f"roles-ndcg10-{EV}",
    "weights-frobenius",
    f"lens-ndcg10-{EV}",
}
TABLES = {f"{t}-ndcg10-{EV}" for t in ("checkpoints", "ranks", "roles")} | {"weights-frobenius", "weights-subspace"}


def _small(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["run"] == "alpha-1b-head" or r["run"].startswith("alpha-1b-r8-")]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("figures") / "results.sqlite"
    Store(path).append(_small(synthetic_rows()))
    return path


@pytest.fixture(scope="module")
def written(small_store, tmp_path_factory):
    """The CLI run once into a folder that already holds an unrelated file and a stale figure."""
    out = tmp_path_factory.mktemp("paper")
    folder = out / "figs"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / f"ranks-ndcg10-{EV}.pdf").write_bytes(b"stale")
    result = CliRunner().invoke(
        app, ["report", str(small_store), "--output", str(out / "r.html"), "--figures", str(folder)]
    )
    assert result.exit_code == 0, result.output
    assert "figures and tables:" in result.output
    return folder


def _rows(path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _number(cell: str) -> float:
    """A cell's value without its significance marks."""
    return float(cell.rstrip("*"))


def test_every_figure_and_table_is_written_once(written):
    names = {p.name for p in written.iterdir()}
    assert names == (
        {f"{f}.{ext}" for f in FIGURES for ext in ("pdf", "svg", "png")}
        | {f"{t}.{ext}" for t in TABLES for ext in ("csv", "tex")}
        | {"notes.txt"}
    )
    assert (written / "notes.txt").read_text() == "mine"  # files the report does not write are left alone
    assert not [p for p in written.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_pdfs_are_one_page_at_paper_width(written):
    for name in FIGURES:
        data = (written / f"{name}.pdf").read_bytes()
        assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF"), name
        assert len(re.findall(rb"/Type\s*/Page(?!s)", data)) == 1, name
        box = re.search(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", data)
        width = float(box.group(1)) / 72
        assert width == pytest.approx(PAPER.single_width) or width == pytest.approx(PAPER.full_width), name
        assert b"/Subtype /Type3" not in data, name  # TrueType fonts (pdf.fonttype 42): journals refuse Type 3


def test_svgs_parse_with_text_of_7_to_8_points(written):
    for name in FIGURES:
        root = ET.parse(written / f"{name}.svg").getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg", name
        assert float(root.get("width").removesuffix("pt")) / 72 in (
            pytest.approx(PAPER.single_width),
            pytest.approx(PAPER.full_width),
        )
        texts = [t for t in root.iter("{http://www.w3.org/2000/svg}text")]
        assert texts, name  # svg.fonttype none: text stays text
        sizes = {float(m) for t in texts for m in re.findall(r"font-size: ([\d.]+)px", t.get("style", ""))}
        assert sizes and min(sizes) >= 7 and max(sizes) <= 8, (name, sizes)
    window = ET.parse(written / f"window-ndcg10-{EV}.svg").getroot()
    assert "nDCG@10 Δbase" in {t.text for t in window.iter("{http://www.w3.org/2000/svg}text")}


def test_pngs_at_300_dpi(written):
    from PIL import Image

    for name in FIGURES:
        with Image.open(written / f"{name}.png") as im:
            assert im.format == "PNG"
            assert im.width in (round(PAPER.single_width * 300), round(PAPER.full_width * 300)), name
            assert im.height > 300
    with Image.open(written / f"window-ndcg10-{EV}.png") as im:  # one panel: one column wide
        assert im.width == round(PAPER.single_width * 300)


def test_tables_hold_the_store_numbers(written, small_store):
    rows = read_rows(small_store)
    checkpoints = _rows(written / f"checkpoints-ndcg10-{EV}.csv")
    header, body = checkpoints[0], {r[2]: r for r in checkpoints[1:]}
    assert header[:3] == ["model", "run", "run folder"] and "step 80" in header
    stored = {
        (r["run"], r["checkpoint"]): r["value"]
        for r in rows
        if r["analysis"] == "checkpoints" and r["metric"] == "nDCG@10"
    }
    compared = 0
    for run, row in body.items():
        for column, cell in zip(header[3:], row[3:]):
            key = (run, f"checkpoint-{column.removeprefix('step ')}")
            if key in stored:
                assert _number(cell) == pytest.approx(stored[key], abs=5e-5), key
                compared += 1
    assert compared == 3 * 5 + 2  # three LoRA runs x five steps, the head-only run's two
    assert body["alpha-1b-r8-all"][-1].endswith("**")  # p = 0.001 at step 80, as the page marks it

    total = math.sqrt(
        sum(r["value"] ** 2 for r in rows if r["run"] == "alpha-1b-r8-mlp" and r["metric"] == "frobenius")
    )
    weights = {r[1]: r for r in _rows(written / "weights-frobenius.csv")[1:]}
    assert float(weights["r8 mlp"][2]) == pytest.approx(total, abs=5e-5)

    # LaTeX: the same cells as the CSV, escaped, with the caption and a label.
    tex = (written / f"checkpoints-ndcg10-{EV}.tex").read_text()
    assert "\\begin{tabular}" in tex and "\\caption{" in tex and f"\\label{{tab:checkpoints-ndcg10-{EV}}}" in tex
    line = next(ln for ln in tex.splitlines() if "alpha-1b-r8-all" in ln)
    assert [c.strip() for c in line.removesuffix("\\\\").split("&")] == body["alpha-1b-r8-all"]
    roles = (written / f"roles-ndcg10-{EV}.tex").read_text()
    assert "$\\Delta$full" in roles and "Δ" not in roles


def test_stale_file_replaced(written):
    assert (written / f"ranks-ndcg10-{EV}.pdf").read_bytes().startswith(b"%PDF-")


def test_error_leaves_folder_and_page_untouched(tmp_path, monkeypatch):
    store = tmp_path / "r.sqlite"
    Store(store).append(r for r in _small(synthetic_rows()) if r["analysis"] in ("checkpoints", "train"))
    folder = tmp_path / "figs"
    folder.mkdir()
    (folder / f"checkpoints-ndcg10-{EV}.csv").write_text("old")

    def broken(table, name):
        raise RuntimeError("disk full")

    monkeypatch.setattr(paper, "table_latex", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(store, tmp_path / "r.html", folder)
    assert [p.name for p in folder.iterdir()] == [f"checkpoints-ndcg10-{EV}.csv"]
    assert (folder / f"checkpoints-ndcg10-{EV}.csv").read_text() == "old"
    left = {p.name for p in tmp_path.iterdir()} - {"r.sqlite-wal", "r.sqlite-shm"}  # SQLite's own, from reading
    assert left == {"figs", "r.sqlite"}  # no page, no staging folder


def test_figures_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "figs").write_text("x")
    with pytest.raises(InputError, match="expected a folder"):
        paper.write_figures([], tmp_path / "figs")


@pytest.mark.parametrize(
    "parts, want",
    [
        (("checkpoints", "nDCG@10", "dev (top 10, 40 queries)"), "checkpoints-ndcg10-dev-top-10-40-queries"),
        (("weights", "||ΔW||_F"), "weights-w-f"),
        (("", None, "??"), "figure"),
    ],
)
def test_slug(parts, want):
    assert slug(*parts) == want


def test_unique_names_number_repeats():
    assert paper._unique(["a", "b", "a", "a"]) == ["a", "b", "a-2", "a-3"]


def test_head_and_search_figures_in_the_paper_style():
    """The two figures the synthetic store lacks (head heat maps, a search's dev curves), drawn by the page's
    functions in the paper style: one column wide, text 7 to 8 pt."""
    from functools import partial

    from relevance_lens.report.figures import Plot
    from relevance_lens.report.head_sections import _head_heatmaps
    from relevance_lens.report.results import Results
    from relevance_lens.report.search_sections import _curves

    cells = [
        dict(
            run="r",
            checkpoint="final",
            layer=layer,
            role=f"h{h}",
            value=0.01 * (h - layer),
            p_value=0.01 if h == 1 else 0.5,
        )
        for layer in range(3)
        for h in range(4)
    ]
    choice = {"tried": [{"run": "a", "setting": {"lr": 1e-3}}, {"run": "b", "setting": {"lr": 2e-3}}], "chosen": "b"}
    rows = [dict(run=x, checkpoint=f"checkpoint-{s}", value=0.1 * s, p_value=None) for x in "ab" for s in (5, 10)]
    plots = [
        _head_heatmaps(Results([]), [("r", "final")], cells, "h", "nDCG@10 Δfull", "drop-head"),
        Plot("search", "dev curves", partial(_curves, choice, rows, {}, "nDCG@10", "dev")),
    ]
    for plot in plots:
        fig = plot.figure(PAPER)
        assert fig.get_size_inches()[0] == pytest.approx(PAPER.single_width)
        buffer = io.BytesIO()
        plot.save(fig, buffer, "svg", PAPER)
        sizes = {float(s) for s in re.findall(rb"font-size: ([\d.]+)px", buffer.getvalue())}
        assert sizes and min(sizes) >= 7 and max(sizes) <= 8, (plot.name, sizes)
