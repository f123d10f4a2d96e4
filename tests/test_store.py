"""The SQLite results store: tidy rows, reruns that replace instead of duplicating, crash safety."""

import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from relevance_lens.errors import InputError
from relevance_lens.store import Store, config_hash

ROW = dict(
    run="r8",
    model="tiny",
    rank=8,
    targets="all",
    checkpoint="final",
    analysis="ablate:drop-layer",
    variant="-L3",
    layer=3,
    role=None,
    metric="nDCG@10",
    value=0.5,
    n_queries=84,
    p_value=0.01,
    config_json={"depth": 10, "eval": "faq-test"},
)


def test_rows_round_trip(tmp_path):
    store = Store(tmp_path / "results.sqlite")
    assert store.append([ROW, {**ROW, "metric": "RR@10", "value": 0.25}]) == 2
    rows = store.rows(run="r8")
    assert [r["metric"] for r in rows] == ["nDCG@10", "RR@10"]
    assert rows[0]["layer"] == 3 and rows[0]["role"] is None and rows[0]["p_value"] == 0.01
    assert rows[0]["config_json"] == '{"depth":10,"eval":"faq-test"}'
    assert rows[0]["config_hash"] == config_hash({"eval": "faq-test", "depth": 10})  # key order does not matter
    assert store.rows(role=None, metric="RR@10")[0]["value"] == 0.25
    assert store.rows(run="other") == []


@pytest.mark.parametrize(
    "change,expected_rows",
    [
        ({}, 1),  # same identity: replaced
        ({"value": 0.7}, 1),  # a rerun with a new value replaces it
        ({"layer": 4}, 2),  # another layer: a new row
        ({"role": "q"}, 2),  # NULL role and "q" differ
        ({"config_json": {"depth": 20, "eval": "faq-test"}}, 2),  # other settings: kept beside
        ({"checkpoint": None}, 2),
    ],
)
def test_rerun_replaces_rather_than_duplicates(tmp_path, change, expected_rows):
    store = Store(tmp_path / "results.sqlite")
    store.append([ROW])
    store.append([{**ROW, **change}])
    store.append([{**ROW, **change}])
    rows = store.rows()
    assert len(rows) == expected_rows
    assert rows[-1]["value"] == change.get("value", 0.5)


def test_has_answers_what_is_done(tmp_path):
    store = Store(tmp_path / "results.sqlite")
    assert not store.has("r8", "ablate:drop-layer")
    store.append([ROW])
    assert store.has("r8", "ablate:drop-layer")
    assert store.has(
        "r8", "ablate:drop-layer", checkpoint="final", variant="-L3", config={"eval": "faq-test", "depth": 10}
    )
    assert not store.has("r8", "ablate:drop-layer", config={"eval": "faq-test", "depth": 20})
    assert not store.has("r8", "ablate:drop-layer", checkpoint="checkpoint-50")
    assert not store.has("r8", "lens")


def test_bad_rows_are_refused_and_nothing_is_written(tmp_path):
    store = Store(tmp_path / "results.sqlite")
    with pytest.raises(InputError, match="unknown columns"):
        store.append([ROW, {**ROW, "colour": "red"}])
    with pytest.raises(InputError, match="lacks value"):
        store.append([{**ROW, "value": None}])
    assert store.rows() == []  # the first, valid row of the failed append was rolled back
    with pytest.raises(InputError, match="unknown result columns"):
        store.rows(colour="red")


CHILD = """
import sys, time
from relevance_lens.store import Store
def rows():
    for i in range(1000):
        if i == 500:
            print("half", flush=True)
            time.sleep(60)
        yield dict(run="killed", analysis="a", metric="m", layer=i, value=float(i))
Store(sys.argv[1]).append(rows())
"""


def test_sigkill_mid_append_leaves_no_partial_rows(tmp_path):
    path = tmp_path / "results.sqlite"
    store = Store(path)
    store.append([ROW])
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "half"  # 500 rows inserted, not committed
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert [r["run"] for r in store.rows()] == ["r8"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    start = time.monotonic()
    store.append([{**ROW, "run": "after"}])  # the journal of the dead writer is rolled back, not in the way
    assert time.monotonic() - start < 5 and len(store.rows()) == 2
