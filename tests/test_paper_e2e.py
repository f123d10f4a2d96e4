"""The paper's study end to end on CPU: paper.toml itself, scaled down.

Tiny random Mistral-, Llama- and GPT-NeoX-shaped models stand in for Mistral-7B, Llama-3.1-8B
and Pythia-6.9B; a tiny MS MARCO-shaped collection (passages, a train split with a BM25-like
run, DL19/DL20-like graded splits and a dev split) is written to local files and registered with
ir_datasets' own registry and formats, so training (``dataset = ID`` in [train]) and every eval
set read it through ir_datasets as they would read MS MARCO. Only sizes are scaled down (models,
ids, steps, batch, depth, ranks and targets, window, precision for the CPU); the analyses tables
are paper.toml's. Then: train -> checkpoints -> ablations -> weights -> lens -> report.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import tomllib

from dissectfix import one_thread  # noqa: F401  (autouse: one thread, float sums in one fixed order)
from irdsfix import msmarco_like, register, split_files
from relevance_lens.report.page import sections, write_report
from relevance_lens.study.spec import STUDIES_DIR
from studyfix import run_study
from tiny import LAYERS, save_tiny

#: paper.toml's models in its order, and the tiny family standing in for each.
FAMILIES = {"mistral-7b": "mistral", "llama3.1-8b": "llama", "pythia-6.9b": "gpt_neox"}
N_DOCS = 40
SPLITS = {  # name -> (paper.toml's eval set or train, query ids, graded like TREC DL)
    "train": ("train", [str(100 + i) for i in range(6)], False),
    "dl19": ("dl19", [str(200 + i) for i in range(3)], True),
    "dl20": ("dl20", [str(300 + i) for i in range(3)], True),
    "dev": ("dev", [str(400 + i) for i in range(3)], False),
}
IDS = {
    "train": "tiny-msmarco-passage/train/judged",
    "dl19": "tiny-msmarco-passage/trec-dl-2019/judged",
    "dl20": "tiny-msmarco-passage/trec-dl-2020/judged",
    "dev": "tiny-msmarco-passage/dev/small",
}
SCALED = {  # [train] settings sized for 7B models on GPUs -> a CPU test
    "group_size": 4,
    "max_length": 48,
    "queries_per_device": 2,
    "grad_accum": 1,
    "precision": "fp32",
    "warmup_steps": 0,
    "max_steps": 4,
    "save_steps": [1, 2],
    "logging_steps": 1,
}


def to_toml(raw: dict) -> str:
    """A parsed study file written back as TOML (JSON's scalars and arrays are TOML's; models are
    inline tables; [evals] and [analyses] hold one table per name)."""

    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    out = []
    for table, body in raw.items():
        nested = table in ("evals", "analyses")
        for name, settings in body.items() if nested else [(None, body)]:
            out.append(f"[{table}.{name}]" if nested else f"[{table}]")
            out += [f"{k} = {value(v)}" for k, v in settings.items()]
    return "\n".join(out) + "\n"


def scaled_paper(root: Path) -> tuple[Path, dict]:
    """paper.toml with the tiny models and registered ids, sized for a CPU; returns (file, its table)."""
    raw = tomllib.loads((STUDIES_DIR / "paper.toml").read_text())
    data = root / "msmarco"
    docs = msmarco_like(data, N_DOCS)
    ids = {}
    for key, (name, qids, graded) in SPLITS.items():
        files = split_files(data, name, qids, N_DOCS, depth=8 if key == "train" else 5, graded=graded, seed=0)
        ids[key] = register(IDS[key], docs=docs, **files)
    study = raw["study"]
    assert [m["label"] for m in study["models"]] == list(FAMILIES)  # what the tiny families stand in for
    study["models"] = [
        {**m, "name": str(save_tiny(FAMILIES[m["label"]], root / FAMILIES[m["label"]]))} for m in study["models"]
    ]
    vs_rank = raw["analyses"]["weights"]["vs_rank"]
    study["ranks"] = [vs_rank]  # the rank weights compares the others with (hidden 32 allows r 32)
    study["targets"] = ["all"]
    train = {k: v for k, v in raw["train"].items() if k not in ("data", "tevatron")}
    raw["train"] = {**train, **SCALED, "dataset": ids["train"]}
    raw["baseline_train"] = {**raw["baseline_train"], "max_steps": 2, "save_steps": [1]}
    for key in ("dl19", "dl20", "dev"):
        ev = raw["evals"][key]
        ev.update(ir_datasets=ids[key], depth=4)
        if "max_queries" in ev:
            ev["max_queries"] = 2
    raw["analyses"]["ablate"].update(window=2, permutations=200)  # 4 layers; a few queries
    raw["scoring"] = {**raw["scoring"], "dtype": "fp32", "device": "cpu"}
    path = root / "paper-tiny.toml"
    path.write_text(to_toml(raw))
    return path, raw


pytestmark = pytest.mark.slow  # 36 cells, each loading a model: over the fast tier's 15 s on a 2-core CPU


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    path, raw = scaled_paper(root)
    store, counts = run_study(path, root / "work")
    return {"root": root, "raw": raw, "store": store, "counts": counts, "work": root / "work"}


def _rows(store: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(store)) as conn:
        return conn.execute(sql).fetchall()


def test_every_cell_is_done(paper):
    counts = paper["counts"]
    assert counts["cells"] > 0 and counts["ran"] == counts["cells"] and counts["skipped"] == 0
    again = run_study(paper["root"] / "paper-tiny.toml", paper["work"])[1]
    assert again["ran"] == 0 and again["skipped"] == counts["cells"]


def test_store_has_every_analysis_for_every_architecture(paper):
    raw, store = paper["raw"], paper["store"]
    trained = _rows(store, "SELECT run, config_json FROM results WHERE analysis='train'")
    runs = {run: json.loads(c) for run, c in trained}
    labels = list(FAMILIES)
    lora = {r for r, c in runs.items() if c["train"]["targets"] != "none"}
    head = set(runs) - lora
    assert len(lora) == len(labels) * len(raw["study"]["ranks"]) and len(head) == len(labels)
    for label in labels:
        assert any(r.startswith(label) for r in lora) and any(r.startswith(label) for r in head)
    checkpoints = _rows(store, "SELECT DISTINCT run, checkpoint, config_json FROM results WHERE analysis='checkpoints'")
    for run in runs:
        steps = raw["train" if run in lora else "baseline_train"]["save_steps"]
        for ev in raw["analyses"]["checkpoints"]["evals"]:
            seen = {cp for r, cp, c in checkpoints if r == run and json.loads(c).get("eval") == ev}
            assert {f"checkpoint-{s}" for s in steps} <= seen, (run, ev, seen)
    for sweep in raw["analyses"]["ablate"]["sweeps"]:
        assert {r for (r,) in _rows(store, f"SELECT DISTINCT run FROM results WHERE analysis='ablate:{sweep}'")} == lora
    assert {r for (r,) in _rows(store, "SELECT DISTINCT run FROM results WHERE analysis='weights'")} == lora
    # weights on a run folder also compares its checkpoints' subspaces (no other rank here to compare with)
    assert {r for (r,) in _rows(store, "SELECT DISTINCT run FROM results WHERE analysis='subspace'")} == lora
    assert {r for (r,) in _rows(store, "SELECT DISTINCT run FROM results WHERE analysis='lens'")} == set(runs)


def test_training_data_came_through_ir_datasets(paper):
    train_id = paper["raw"]["train"]["dataset"]
    for run_json in (paper["work"] / "runs").glob("*/run.json"):
        record = json.loads(run_json.read_text())
        assert record["config"]["data"] == "dataset" and record["config"]["dataset"] == train_id
        assert record["data_fingerprints"]["negatives"] == f"ir_datasets {train_id} scoreddocs"
        assert record["resolved"]["train_queries"] == len(SPLITS["train"][1])


def test_report_has_every_architecture_in_every_section(paper, tmp_path, monkeypatch):
    import relevance_lens.report.page as report_page

    # The sections the page was written from, kept as write_report builds them (building them again
    # here drew every figure twice).
    kept = []
    monkeypatch.setattr(report_page, "sections", lambda rows: kept.extend(sections(rows)) or kept)
    page = write_report(paper["store"], tmp_path / "report.html").read_text()
    assert kept and all(s.html() in page for s in kept)
    built = {s.id: s for s in kept}
    for sid in ("checkpoints", "ranks", "layer-heatmap", "roles", "weights", "lens", "configs"):
        assert built[sid].body, sid
        if "<table" not in built[sid].body:  # figures only: the runs are named inside the images
            assert "<img" in built[sid].body, sid
            continue
        for label, family in FAMILIES.items():  # a run's label, or its model's folder (named for its family)
            assert label in built[sid].body or f"<td>{family}</td>" in built[sid].body, (sid, label)
    for label in FAMILIES:
        assert label in page
    assert LAYERS == 4  # the window of 2 above is sized for this
