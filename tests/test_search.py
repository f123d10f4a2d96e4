"""The recipe search: settings tried on dev, the choice recorded in the store, the test split read
once, for the chosen run only and only after the choice; reruns keep the choice; the report shows
every dev curve; study files that would let test leak into the choice are refused."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dissectfix import one_thread  # noqa: F401  (autouse: one thread, float sums in one fixed order)
from relevance_lens import study as st
from relevance_lens.dissect import evalset as evalset_module
from relevance_lens.errors import InputError
from relevance_lens.report import results as report_results
from relevance_lens.store import Store
from relevance_lens.study import run as run_module
from relevance_lens.study import search
from studyfix import (  # noqa: F401  (no_weights_no_network: a fixture)
    dry_run,
    no_weights_no_network,
    run_study,
    study_files,
    study_toml,
)

STUDY = study_toml(
    "tiny-search",
    max_steps=2,
    save_steps=(1,),
    lr=None,
    max_length=48,
    baseline=None,
    sections="""[search]
select_on = "dev"
metric = "nDCG@10"
test = "test"
lr = [1e-2, 1e-4]

[evals.dev]
split = "dev"
depth = 3
max_queries = 2

[evals.test]
split = "test"
depth = 3
max_queries = 2
""",
)


@pytest.fixture(scope="module")
def make_study(tmp_path_factory):
    """``make(name, text) -> path``: a study file over the tiny model and collection."""
    return study_files(tmp_path_factory.mktemp("search"), "search.toml", STUDY)


def _choices(store: Path) -> list[dict]:
    return [r for r in Store(store).rows(analysis="search") if r["variant"] == search.CHOICE]


@pytest.fixture(scope="module")
def searched(make_study, tmp_path_factory):
    """The tiny search run once, with every FAQ split the eval sets load recorded in order,
    each with whether the choice row was in the store at that moment."""
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("searched")
    store = work / "results.sqlite"
    reads: list[tuple[str, bool]] = []
    original = evalset_module.load_faq

    def recording(split, *args, **kwargs):
        reads.append((split, store.is_file() and bool(_choices(store))))
        return original(split, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evalset_module, "load_faq", recording)
        mp.setattr(run_module, "gc", SimpleNamespace(collect=lambda: 0))  # ~1 s a cell here; frees nothing we need
        _, counts = run_study(make_study(), work)
        rerun_reads_from = len(reads)
        _, again = run_study(make_study(), work)
    return {
        "path": make_study(),
        "store": store,
        "counts": counts,
        "again": again,
        "reads": reads,
        "first": rerun_reads_from,
    }


def test_test_is_read_once_after_the_choice_for_the_chosen_run(searched):
    reads = searched["reads"][: searched["first"]]
    splits = [s for s, _ in reads]
    # one dev curve per tried setting before the choice (the head-only baseline's dev cell may come later)
    assert splits.count("test") == 1 and [s for s, chosen in reads if not chosen] == ["dev", "dev"]
    assert all(chosen for s, chosen in reads if s == "test")  # test read only once the choice is stored
    assert not any(chosen for s, chosen in reads if s == "dev")  # the dev curves come before the choice
    assert splits.index("test") > max(i for i, s in enumerate(splits) if s == "dev")
    choice = json.loads(_choices(searched["store"])[0]["config_json"])
    on_test = [
        r
        for r in Store(searched["store"]).rows(analysis="checkpoints")
        if json.loads(r["config_json"])["eval"] == "test" and r["checkpoint"] != "bm25"
    ]
    assert {(r["run"], r["checkpoint"]) for r in on_test} == {(choice["chosen"], "final")}


def test_choice_is_the_best_dev_number_with_every_tried_setting(searched):
    (row,) = _choices(searched["store"])
    choice = json.loads(row["config_json"])
    assert [t["setting"] for t in choice["tried"]] == [{"lr": 1e-2}, {"lr": 1e-4}]
    dev = {}
    for r in Store(searched["store"]).rows(analysis="checkpoints", checkpoint="final", metric="nDCG@10"):
        if json.loads(r["config_json"])["eval"] == "dev":
            dev[r["run"]] = r["value"]
    assert {t["run"]: t["value"] for t in choice["tried"]} == dev and len(dev) == 2
    best = max(choice["tried"], key=lambda t: t["value"])["value"]
    assert choice["chosen"] == next(t["run"] for t in choice["tried"] if t["value"] == best)  # ties: first listed
    tried_rows = [r for r in Store(searched["store"]).rows(analysis="search") if r["variant"] != search.CHOICE]
    assert sorted((r["run"], json.loads(r["config_json"])["chosen"]) for r in tried_rows) == sorted(
        (t["run"], t["run"] == choice["chosen"]) for t in choice["tried"]
    )
    # Analyses run on the chosen run only; its checkpoints-on-dev cell is the dev curve's, already done.
    trained = {r["run"] for r in Store(searched["store"]).rows(analysis="train")}
    assert trained == set(dev)


def test_rerun_skips_everything_reads_nothing_and_keeps_the_choice(searched):
    counts, again = searched["counts"], searched["again"]
    assert counts["ran"] == counts["cells"] - 1  # the chosen run's checkpoints on dev: its dev curve's cell
    assert again["ran"] == 0 and again["skipped"] == again["cells"] == counts["cells"]
    assert searched["reads"][searched["first"] :] == []
    (before,) = _choices(searched["store"])
    cell = next(c for c in st.expand(st.load_study(searched["path"])) if c.kind == "search")
    recorded = search.record_choice(cell, Store(searched["store"]))  # asked again: reads the choice back
    assert recorded == json.loads(before["config_json"]) and _choices(searched["store"]) == [before]


def test_report_shows_every_dev_curve_and_the_one_test_number(searched, tmp_path):
    from relevance_lens.report.page import write_report

    assert report_results.CHOICE == search.CHOICE
    text = write_report(searched["store"], tmp_path / "report.html").read_text()
    body = text.split('<section id="search">', 1)[1].split("</section>", 1)[0]
    choice = json.loads(_choices(searched["store"])[0]["config_json"])
    assert 'class="note"' not in body and body.count("data:image/png;base64,") == 1
    assert "lr=0.01" in body and "lr=0.0001" in body and body.count(">chosen<") == 1
    assert f"({choice['chosen']}): test nDCG@10" in body and "vs BM25" in body
    assert "runs (1 LoRA" not in text  # the search's choice row is not counted as a run


# ---------------------------------------------------------------- the plan (no training)


def test_no_cell_reads_test_before_the_choice(make_study, tmp_path):
    cells = st.expand(st.load_study(make_study()))
    kinds = [c.kind for c in cells]
    choose = kinds.index("search")
    on_test = [i for i, c in enumerate(cells) if (c.config.get("eval") or {}).get("split") == "test"]
    assert len(on_test) == 1 and on_test[0] > choose
    test_cell = cells[on_test[0]]
    assert test_cell.config["after_choice"] == cells[choose].run and test_cell.config["final_only"]
    assert all(c.config.get("after_choice") for c in cells[choose + 1 :])
    assert len({c.unit for c in cells}) == 1  # a search's cells stay in one shard, its choice beside its runs
    assert [c.what for c in cells] == [
        "train",
        "checkpoints on dev",
        "train",
        "checkpoints on dev",
        "choose by nDCG@10 on dev",
        "test once on test (chosen run, final)",
        "checkpoints on dev (chosen run)",
    ]
    # Before the choice, a deferred cell has no run to read: it waits, and running it is refused.
    store = Store(tmp_path / "empty.sqlite")
    assert st.status(test_cell, tmp_path, store) == "waits for the choice"
    with pytest.raises(InputError, match="has no recorded choice yet"):
        search.resolve(test_cell, store, required=True)


def test_ties_go_to_the_first_listed_setting(make_study, tmp_path):
    cells = st.expand(st.load_study(make_study()))
    choose = next(c for c in cells if c.kind == "search")
    store = Store(tmp_path / "s.sqlite")
    ev = choose.config["eval"]
    config = {"eval": "dev", "depth": ev["depth"], "max_queries": ev["max_queries"], "baseline": "bm25"}
    store.append(
        {
            "run": run,
            "checkpoint": "final",
            "analysis": "checkpoints",
            "metric": "nDCG@10",
            "value": 0.5,
            "config_json": config,
        }
        for run in reversed(choose.config["tried"])
    )
    assert search.record_choice(choose, store)["chosen"] == choose.config["tried"][0]
    resolved = search.resolve(cells[-2], store)
    assert resolved.run == choose.config["tried"][0] and "after_choice" not in resolved.config


@pytest.mark.usefixtures("no_weights_no_network")
def test_packaged_recipe_search_dry_run_lists_the_search(tmp_path):
    out = tmp_path / "out.txt"
    listed = dry_run("recipe-search", tmp_path / "w", out)
    trains = [c for c, _ in listed if c.kind == "train"]
    assert sorted((c.config["train"]["lr"], c.config["train"]["max_steps"]) for c in trains) == [
        (5e-4, 50),
        (2e-3, 50),
        (3e-3, 50),
    ]
    states = {c.what: s for c, s in listed}
    assert states["choose by nDCG@10 on dev"] == "pending"
    assert states["test once on test (chosen run, final)"] == "waits for the choice"
    assert "waits for the choice" in out.read_text() and not (tmp_path / "w").exists()


# ---------------------------------------------------------------- refused study files


@pytest.mark.parametrize(
    "edit,message",
    [
        (('select_on = "dev"', 'select_on = "test"'), "select_on = 'test' reads the test data"),
        (('[evals.dev]\nsplit = "dev"', '[evals.dev]\nsplit = "test"'), "select_on = 'dev' reads the test data"),
        (('test = "test"', 'test = "held"'), "test = 'held' is not an eval set"),
        (("[analyses.checkpoints]", '[analyses.checkpoints]\nevals = ["test"]'), "evals names the search's test set"),
        (
            ("[analyses.checkpoints]", '[evals.again]\nsplit = "test"\n[analyses.checkpoints]'),
            "same data as the search's test set",
        ),
        (('metric = "nDCG@10"', 'metric = "P@1"'), "metric = 'P@1' is not among"),
        (("lr = [1e-2, 1e-4]", "lr = []"), "expected a non-empty list"),
        (("lr = [1e-2, 1e-4]", 'lr = ["fast"]'), "expected each value to be a number"),
        (("lr = [1e-2, 1e-4]", "lr = [1e-2, 1e-2]"), "listed twice"),
        (("lr = [1e-2, 1e-4]", "rank = [1, 2]"), "rank is set by the study, not here; use ranks"),
        (
            ("lr = [1e-2, 1e-4]", "lrr = [1e-2]"),
            r"unknown key\(s\) lrr; expected metric, select_on, test or training settings",
        ),
        (("lr = [1e-2, 1e-4]", "max_steps = [1, 2]"), "max_steps is searched here and also set in \\[train\\]"),
        (("lr = [1e-2, 1e-4]", ""), "no training setting to search"),
    ],
)
def test_bad_search_is_refused_in_one_line(make_study, tmp_path, edit, message):
    text = STUDY.replace(*edit, 1)
    assert text != STUDY
    with pytest.raises(InputError, match=message) as caught:
        run_study(make_study("bad.toml", text), tmp_path / "w")
    assert "\n" not in str(caught.value) and "bad.toml" in str(caught.value)
    assert not (tmp_path / "w").exists()
