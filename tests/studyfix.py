"""Tiny studies for the study tests: a study file's text over the tiny collection and model,
written out; a study run in this process and its rows; dry runs with no weights or network; a
fake ir_datasets dataset."""

from __future__ import annotations

import json
import socket
import sqlite3
import sys
from collections import namedtuple
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from relevance_lens import study as st
from trainfix import tiny_collection

#: The tiny collection as an eval set: the training queries, reranking the negatives run's top 4.
TINY_EVAL = """[evals.tiny]
queries = "{queries}"
qrels = "{qrels}"
corpus = "{corpus}"
run = "{negatives_run}"
depth = 4
"""


def _list(values) -> str:
    return json.dumps(list(values))


def study_toml(
    name: str,
    *,
    ranks=(1,),
    targets=("mha",),
    max_steps: int = 4,
    save_steps=(2,),
    lr: str | None = "1e-2",
    max_length: int = 64,
    precision: str = "fp32",
    baseline: tuple[int, tuple] | None = (2, (1,)),
    sections: str = TINY_EVAL,
    analyses: str = "[analyses.checkpoints]\n",
    scoring: str = "",
) -> str:
    """A tiny study's file: one seed of ``ranks`` x ``targets`` on the tiny model, trained on the
    tiny collection (``{model}``, ``{queries}``, ... are left for :func:`study_files` to fill in).

    ``baseline``: the head-only run's ``(max_steps, save_steps)``, or None for no head-only run;
    ``sections``: the tables between training and the analyses (eval sets, a search);
    ``scoring``: lines added to ``[scoring]``. ``lr`` is text, as the tests edit the file's text.
    """
    text = f"""
[study]
name = "{name}"
models = ["{{model}}"]
ranks = {_list(ranks)}
targets = {_list(targets)}
seeds = [0]
"""
    text += "baseline = false\n" if baseline is None else ""
    text += f"""
[train]
data = "files"
queries = "{{queries}}"
qrels = "{{qrels}}"
corpus = "{{corpus}}"
negatives_run = "{{negatives_run}}"
group_size = 4
queries_per_device = 2
max_steps = {max_steps}
save_steps = {_list(save_steps)}
"""
    text += "" if lr is None else f"lr = {lr}\n"
    text += f"""max_length = {max_length}
precision = "{precision}"
warmup_steps = 0
logging_steps = 1
"""
    if baseline is not None:
        text += f"\n[baseline_train]\nmax_steps = {baseline[0]}\nsave_steps = {_list(baseline[1])}\n"
    return text + f'\n{sections}\n{analyses}\n[scoring]\ndtype = "{precision}"\ndevice = "cpu"\n{scoring}'


def fill(text: str, values: dict) -> str:
    """``text`` with each ``{key}`` of ``values`` replaced by its value."""
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def study_files(root: Path, name: str = "study.toml", text: str = "", **defaults):
    """Writes the tiny collection and model in ``root``; returns ``make(name, text, **values) -> path``,
    which writes a study file there with the collection's paths and ``values`` (over ``defaults``)
    filled in. ``make.root`` is ``root``, ``make.paths`` the collection's paths (and the model's)."""
    paths = tiny_collection(root)

    def make(name: str = name, text: str = text, **values) -> Path:
        path = root / name
        path.write_text(fill(text, {**paths, **defaults, **values}))
        return path

    make.root, make.paths = root, paths
    return make


def run_study(study_path: Path, workdir: Path, shard=None, store=None, log: Path | None = None) -> tuple[Path, dict]:
    """``study run`` in this process, its output to ``log`` (default: none); returns (its store, its counts)."""
    spec = st.load_study(study_path)
    workdir, store = st.default_paths(spec, workdir, store, shard)
    options = st.RunOptions(workdir=workdir, store=store, shard=shard, progress=False)
    if log is None:
        return store, st.run_study(spec, options, Console(quiet=True))
    with open(log, "w", buffering=1) as fh:
        return store, st.run_study(spec, options, Console(file=fh, width=300, color_system=None))


#: The rows holding cells' measured seconds: a rerun's differ by nature, so store comparisons leave them out.
NOT_TIMING = "NOT (analysis = 'study' AND metric = 'seconds')"


def sorted_rows(store: Path) -> list[tuple]:
    """Every row minus its timestamp, sorted (timing rows left out)."""
    with closing(sqlite3.connect(store)) as conn:
        cursor = conn.execute(f"SELECT * FROM results WHERE {NOT_TIMING}")
        names = [d[0] for d in cursor.description]
        rows = [tuple(v for n, v in zip(names, row) if n != "created") for row in cursor.fetchall()]
    return sorted(rows, key=repr)


# ---------------------------------------------------------------- dry runs


@pytest.fixture
def no_weights_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not load weights or touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr("relevance_lens.model.backbone.resolve_model", refuse)
    monkeypatch.setattr("relevance_lens.model.backbone.load_backbone", refuse)
    monkeypatch.setattr("transformers.AutoModel.from_pretrained", refuse)
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", refuse)


def dry_run(study, workdir: Path, out: Path | None = None) -> list:
    """``study run --dry-run`` of ``study`` (a name or a file) on ``workdir``: its (cell, state)
    pairs; what it prints goes to ``out`` (default: nowhere)."""
    spec = st.load_study(study)
    options = st.RunOptions(workdir=workdir, store=workdir / "r.sqlite")
    if out is None:
        return st.dry_run(spec, options, Console(quiet=True))
    with open(out, "w") as fh:
        return st.dry_run(spec, options, Console(file=fh, width=250))


# ---------------------------------------------------------------- ir_datasets


Query, Qrel, Scored, Doc = (
    namedtuple(n, f)
    for n, f in (
        ("Query", "query_id text"),
        ("Qrel", "query_id doc_id relevance iteration"),
        ("Scored", "query_id doc_id score"),
        ("Doc", "doc_id text"),
    )
)


def fake_dataset(monkeypatch, queries, qrels, scoreddocs) -> list[str]:
    """Register an ir_datasets-shaped dataset under every name: ``queries`` as (id, text),
    ``qrels`` as (query, passage, grade), ``scoreddocs`` as (query, passage, score), in that
    order; each passage's text is ``text of ID``. Returns the passage ids fetched, as fetched."""
    fetched = []

    class Store:
        def get_many(self, ids):
            fetched.extend(ids)
            return {d: Doc(d, f"text of {d}") for d in ids}

    dataset = SimpleNamespace(
        has_scoreddocs=lambda: True,
        has_qrels=lambda: True,
        queries_iter=lambda: iter([Query(q, text) for q, text in queries]),
        qrels_iter=lambda: iter([Qrel(q, d, g, "0") for q, d, g in qrels]),
        scoreddocs_iter=lambda: iter([Scored(q, d, s) for q, d, s in scoreddocs]),
        docs_store=lambda: Store(),
    )
    monkeypatch.setitem(sys.modules, "ir_datasets", SimpleNamespace(load=lambda name: dataset))
    return fetched
