"""Candidate selection, the reranked run's tail, TREC DL's relevance level, query samples and shards.

A first stage whose scores tie (MS MARCO's official top-1000 lists, served by ir_datasets with
score 0) must never have its top-``depth`` picked by passage id.
"""

from __future__ import annotations

import random

import pytest
from typer.testing import CliRunner

from relevance_lens import study as st
from relevance_lens.cli import app
from relevance_lens.data.candidates import ranked, top_candidates, with_tail
from relevance_lens.data.formats import Passage, read_run, write_qrels, write_run
from relevance_lens.dissect.evalset import EvalSet, build_evalset, ir_metric
from relevance_lens.errors import InputError
from relevance_lens.evaluate.metrics import binary_relevance_level, evaluate
from relevance_lens.score.batching import candidate_pairs
from relevance_lens.score.config import ScoreConfig
from relevance_lens.score.rerank import rerank
from relevance_lens.study.plan import Cell, assign_shards
from relevance_lens.train.groups import _from_run
from studyfix import fake_dataset
from tiny import tiny_reranker

# Iterator order deliberately far from docid order: docid order would pick d0, d1, d2 first.
GIVEN = ["d7", "d3", "d9", "d0", "d5", "d1", "d8", "d2"]


def fake_ir_datasets(monkeypatch, scores, qrels=(("1", "d9", 2),)):
    """Register an ir_datasets-shaped dataset (query 1, scoreddocs in GIVEN order); returns fetched ids."""
    return fake_dataset(monkeypatch, [("1", "a judged query")], qrels, [("1", d, s) for d, s in zip(GIVEN, scores)])


def dl_evalset(depth, name="msmarco-passage/trec-dl-2019/judged"):
    return build_evalset({"name": "dl19", "ir_datasets": name, "depth": depth, "max_queries": None})


# ---------------------------------------------------------------- candidates


def test_ties_keep_the_given_order_never_the_docid_order():
    assert [d for d, _ in ranked({"z": 1.0, "a": 1.0, "m": 2.0, "b": 1.0})] == ["m", "z", "a", "b"]
    assert top_candidates({"z": 1.0, "a": 1.0, "m": 2.0, "b": 0.5}, 2, qid="q") == [("m", 2.0), ("z", 1.0)]


def test_unscored_ir_datasets_first_stage_is_refused_at_a_cut(monkeypatch):
    # MS MARCO's scoreddocs: every score 0, in an order MS MARCO made random.
    fake_ir_datasets(monkeypatch, [0.0] * len(GIVEN))
    with pytest.raises(InputError) as info:
        dl_evalset(depth=4)
    message = str(info.value)
    assert "ir_datasets msmarco-passage/trec-dl-2019/judged scoreddocs: query '1'" in message
    assert "8 candidates that all score 0" in message and "depth of at least 8" in message
    assert "\n" not in message


def test_unscored_first_stage_reranked_whole_keeps_its_order(monkeypatch):
    fetched = fake_ir_datasets(monkeypatch, [0.0] * len(GIVEN))
    evalset = dl_evalset(depth=len(GIVEN))
    assert [d for _, d in evalset.pairs()] == GIVEN
    assert list(evalset.first_stage()["1"]) == GIVEN
    assert sorted(fetched) == sorted(GIVEN)


def test_depth_cut_inside_a_partial_tie_takes_the_given_order(monkeypatch):
    # d7 leads; the next six tie; a cut at 3 takes d3 and d9 (given order), not d0 and d1 (docid order).
    fetched = fake_ir_datasets(monkeypatch, [9.0] + [5.0] * 6 + [1.0])
    evalset = dl_evalset(depth=3)
    assert evalset.pairs() == [("1", "d7"), ("1", "d3"), ("1", "d9")]
    assert list(evalset.first_stage()["1"]) == ["d7", "d3", "d9"]
    assert sorted(fetched) == ["d3", "d7", "d9"]


def test_every_candidate_path_ranks_ties_alike(tmp_path):
    """Rerank pairs, eval sets from files, training negatives and written runs: one ranking."""
    docs = dict(zip(GIVEN, [3.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0]))
    want = ["d7", "d3", "d9"]
    corpus = {d: Passage(d, "", d) for d in GIVEN}
    assert [d for _, d in candidate_pairs({"q": docs}, {"q": "x"}, corpus, 3)] == want
    path = tmp_path / "run.trec"
    write_run({"q": docs}, path)
    assert list(read_run(path)["q"]) == GIVEN  # file order is the run's order, read back the same
    evalset = EvalSet("f", {"q": "x"}, {"q": {"d2": 1}}, corpus, read_run(path), depth=3)
    assert list(evalset.first_stage()["q"]) == want
    groups = _from_run({"q": "x"}, {"q": {"d7": 1}}, {"q": docs}, corpus, 3, {})
    assert groups.negatives["q"] == ["d3", "d9"]
    with pytest.raises(InputError, match="the negatives run: query 'q' has 8 candidates that all score 0"):
        _from_run({"q": "x"}, {"q": {"d7": 1}}, {"q": dict.fromkeys(GIVEN, 0.0)}, corpus, 3, {})


# ---------------------------------------------------------------- the reranked run's tail


def test_with_tail_puts_the_tail_below_the_head_in_first_stage_order():
    first = {"q": dict(zip(GIVEN, [8.0, 7.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]))}
    head = {"q": {"d7": -3.0, "d3": 0.5, "d9": -1.0}}  # reranker scores, any scale
    out = with_tail(head, first)
    assert [d for d, _ in ranked(out["q"])] == ["d3", "d9", "d7", *GIVEN[3:]]
    assert out["q"]["d3"] == 0.5 and out["q"]["d0"] < -3.0
    tail = [out["q"][d] for d in GIVEN[3:]]
    assert [a - b for a, b in zip(tail, tail[1:])] == [1.0, 1.0, 1.0, 1.0]  # first-stage gaps kept


def test_rerank_keeps_the_first_stage_tail_so_recall_compares_like_with_like():
    reranker = tiny_reranker("llama")
    queries = {"q": "what is the capital of france"}
    corpus = {d: Passage(d, "", f"paris is the capital {i}") for i, d in enumerate(GIVEN)}
    first = {"q": dict(zip(GIVEN, [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]))}
    qrels = {"q": {"d1": 1}}  # sixth in the first stage: below a top-3 rerank
    cpu = dict(dtype="fp32", device="cpu")
    kept = rerank(reranker, queries, corpus, first, ScoreConfig(depth=3, **cpu), progress=False)
    dropped = rerank(reranker, queries, corpus, first, ScoreConfig(depth=3, keep_tail=False, **cpu), progress=False)
    assert set(dropped["q"]) == set(GIVEN[:3])
    assert [d for d, _ in ranked(kept["q"])][3:] == GIVEN[3:]
    assert {d: kept["q"][d] for d in GIVEN[:3]} == dropped["q"]
    recall = [evaluate(qrels, r, ["R@8"]).aggregate["R@8"] for r in (first, kept, dropped)]
    assert recall == [1.0, 1.0, 0.0]


# ---------------------------------------------------------------- TREC DL: grade >= 2 is relevant


def test_binary_measures_count_grade_two_for_trec_dl():
    qrels = {"q": {"a": 1, "b": 2, "c": 0, "d": 3}}
    run = {"q": {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}}
    names = ["RR@10", "R@2", "AP", "nDCG@10"]
    plain = evaluate(qrels, run, names).aggregate
    dl = evaluate(qrels, run, names, binary_relevance_level=2).aggregate
    assert plain["RR@10"] == 1.0 and dl["RR@10"] == 0.5  # "a" (grade 1) is not relevant in TREC DL
    assert plain["R@2"] == pytest.approx(2 / 3) and dl["R@2"] == 0.5
    assert dl["AP"] == pytest.approx((1 / 2 + 2 / 4) / 2) and plain["AP"] > dl["AP"]
    assert dl["nDCG@10"] == plain["nDCG@10"]  # graded: unchanged
    # A level written in the name wins.
    assert evaluate(qrels, run, ["RR(rel=3)@10"], binary_relevance_level=2).aggregate["RR(rel=3)@10"] == 0.25


@pytest.mark.parametrize(
    ("dataset", "setting", "level"),
    [
        ("msmarco-passage/trec-dl-2019/judged", None, 2),
        ("msmarco-passage/trec-dl-2020", None, 2),
        ("msmarco-passage/dev/small", None, 1),
        (None, None, 1),
        (None, 2, 2),
        ("msmarco-passage/trec-dl-2019", 1, 1),
    ],
)
def test_relevance_level_by_name_or_setting(dataset, setting, level):
    assert binary_relevance_level(dataset, setting) == level


def test_relevance_level_setting_is_checked():
    with pytest.raises(InputError, match="binary_relevance_level 0: expected a grade of at least 1"):
        binary_relevance_level(None, 0)


def test_trec_dl_eval_set_applies_and_records_grade_two(monkeypatch):
    scores = [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    fake_ir_datasets(monkeypatch, scores, qrels=(("1", "d7", 1), ("1", "d3", 2)))
    evalset = dl_evalset(depth=8)
    assert evalset.binary_relevance_level == 2
    assert evalset.describe()["binary_relevance_level"] == 2
    assert ir_metric(evalset, "RR@10")(evalset.first_stage()) == {"1": 0.5}
    fake_ir_datasets(monkeypatch, scores, qrels=(("1", "d7", 1), ("1", "d3", 2)))
    other = dl_evalset(depth=8, name="msmarco-passage/dev/small")
    assert ir_metric(other, "RR@10")(other.first_stage()) == {"1": 1.0}
    assert "binary_relevance_level" not in other.describe()


def test_evaluate_cli_takes_the_level_and_hints_at_graded_qrels(tmp_path):
    write_qrels({"q": {"a": 1, "b": 2}}, tmp_path / "qrels")
    write_run({"q": {"a": 2.0, "b": 1.0}}, tmp_path / "run")
    base = ["evaluate", "--qrels", str(tmp_path / "qrels"), "--run", str(tmp_path / "run"), "--metrics", "RR@10"]
    plain = CliRunner().invoke(app, [*base, "--json"])
    assert plain.exit_code == 0 and '"RR@10": 1.0' in plain.stdout
    assert "TREC DL counts >= 2, --binary-relevance-level 2" in " ".join(plain.stderr.split())
    dl = CliRunner().invoke(app, [*base, "--json", "--binary-relevance-level", "2"])
    assert dl.exit_code == 0 and '"RR@10": 0.5' in dl.stdout
    assert "count grade >= 2 as relevant" in " ".join(dl.stderr.split())


# ---------------------------------------------------------------- max_queries: a seeded sample


def test_max_queries_is_a_seeded_random_sample():
    ids = [f"{i:03d}" for i in range(60)]
    corpus = {"d": Passage("d", "", "x")}

    def sample(seed=0):
        evalset = EvalSet(
            "s", {q: q for q in ids}, {q: {"d": 1} for q in ids}, corpus, {q: {"d": 1.0} for q in ids}, 1, 10, seed
        )
        return evalset.query_ids

    first = sample()
    assert len(first) == 10 and first == sorted(first) and first == sample()
    assert first != ids[:10]
    assert sample(seed=1) != first
    assert first == sorted(random.Random(0).sample(ids, 10))


# ---------------------------------------------------------------- shards


def _cells(costs):
    return [Cell("train", f"run{i}", {"train": {"i": i}}, unit=f"{i:012x}", work=w) for i, w in enumerate(costs)]


@pytest.mark.parametrize(
    ("costs", "n"),
    [([5, 5, 5, 5], 2), ([100, 1, 1, 1], 2), ([3, 1, 4, 1, 5], 2), ([7] * 7, 3), ([9, 8, 1, 1, 1, 1], 4), ([2], 3)],
)
def test_shards_differ_by_at_most_one_run_and_balance_cost(costs, n):
    cells = _cells(costs)
    owner = assign_shards(cells, n)
    counts = [sum(1 for c in cells if owner[c.unit] == i) for i in range(n)]
    assert max(counts) - min(counts) <= 1
    # Stable: any order of the same grid gives the same assignment.
    shuffled = list(cells)
    random.Random(1).shuffle(shuffled)
    assert assign_shards(shuffled, n) == owner
    loads = [sum(c.work for c in cells if owner[c.unit] == i) for i in range(n)]
    if costs == [3, 1, 4, 1, 5]:
        assert sorted(loads) == [7, 7]


def test_a_small_study_grid_splits_evenly(tmp_path):
    study_file = tmp_path / "small.toml"
    study_file.write_text(
        '[study]\nname = "small"\nmodels = ["smollm2-135m"]\nranks = [4, 8]\ntargets = ["mha", "mlp"]\n'
        'seeds = [0]\nbaseline = true\n\n[train]\nmax_steps = 10\n\n[evals.dev]\nsplit = "dev"\ndepth = 10\n\n'
        "[analyses.checkpoints]\n"
    )
    cells = st.expand(st.load_study(study_file))
    trains = [c for c in cells if c.kind == "train"]
    assert len(trains) == 5  # four LoRA runs and the head-only baseline
    for n in (2, 3, 4):
        owned = [[c for c in trains if st.shard_of(c, n, cells) == i] for i in range(n)]
        assert max(map(len, owned)) - min(map(len, owned)) <= 1
        for i in range(n):  # each shard runs its own runs' analyses, with what they need
            part = st.select(cells, (i, n))
            assert {c.run for c in part if c.kind == "analyze"} <= {c.run for c in part if c.kind == "train"}


# ---------------------------------------------------------------- ir_datasets ids on the command line


@pytest.fixture
def local_dl(tmp_path):
    """A TREC DL-shaped collection registered with ir_datasets from local files (no network): its
    scoreddocs are MS MARCO-style (qid, docid; no scores), its qrels graded."""
    irds = pytest.importorskip("ir_datasets")
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.formats import TrecQrels, TrecScoredDocs, TsvDocs, TsvQueries
    from ir_datasets.util import LocalDownload

    files = {
        # Term counts differ, so BM25 scores differ (identical texts would tie, and be refused).
        "docs.tsv": "".join(f"{d}\t{' '.join(['paris'] * (i + 1))} is in france\n" for i, d in enumerate(GIVEN)),
        "queries.tsv": "1\twhat is the capital of france\n",
        "qrels.txt": "1 0 d7 1\n1 0 d3 2\n",
        "scoreddocs.tsv": "".join(f"1\t{d}\n" for d in GIVEN),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    local = {name: LocalDownload(tmp_path / name) for name in files}
    dataset_id = f"relevance-lens-test/trec-dl-{tmp_path.name}"
    irds.registry.register(
        dataset_id,
        Dataset(
            TsvDocs(local["docs.tsv"], namespace=dataset_id),
            TsvQueries(local["queries.tsv"], namespace=dataset_id),
            TrecQrels(local["qrels.txt"], {}),
            TrecScoredDocs(local["scoreddocs.tsv"]),
        ),
    )
    return dataset_id


def test_evaluate_with_a_trec_dl_id_counts_grade_two(local_dl, tmp_path):
    write_run({"1": {"d7": 2.0, "d3": 1.0}}, tmp_path / "run")
    args = ["evaluate", "--dataset", local_dl, "--run", str(tmp_path / "run"), "--metrics", "RR@10", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert '"RR@10": 0.5' in result.stdout and "count grade >= 2" in " ".join(result.stderr.split())


def test_rerank_with_an_unscored_dataset_is_refused_before_loading_a_model(local_dl, tmp_path):
    args = ["rerank", "--dataset", local_dl, "--output", str(tmp_path / "out"), "--depth", "3", "--model", "nosuch"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, InputError), result.output
    assert "scoreddocs: query '1' has 8 candidates that all score 0" in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_bm25_then_rerank_a_dataset(local_dl, tmp_path):
    from tiny import save_tiny

    result = CliRunner().invoke(
        app, ["bm25", "--dataset", local_dl, "--output", str(tmp_path / "bm25.run"), "--depth", "5"]
    )
    assert result.exit_code == 0, result.output
    first = read_run(tmp_path / "bm25.run")
    assert len(first["1"]) == 5
    model = save_tiny("llama", tmp_path / "model")
    args = ["rerank", "--dataset", local_dl, "--run", str(tmp_path / "bm25.run"), "--model", str(model)]
    args += ["--output", str(tmp_path / "rr.run"), "--depth", "2", "--dtype", "fp32", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    reranked = read_run(tmp_path / "rr.run")
    assert list(reranked["1"])[2:] == list(first["1"])[2:]  # BM25's tail, in BM25's order
