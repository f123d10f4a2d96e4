"""Concurrency: one unit of work is never done by two processes at once.

The lock itself (exclusive, re-entrant per thread, names its holder, dies with a SIGKILLed
holder); two ``train --resume`` on one folder; two ``study run`` on one work folder; two
shards sharing a work folder, merged; the store in WAL mode.

Other processes are ``fork``\\ ed from the test process (torch already imported: no start-up
cost); the test itself holds a lock as a gate so that both processes meet a cell in progress.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
import torch

from dissectfix import one_thread  # noqa: F401  (autouse: one thread, float sums in one fixed order)
from relevance_lens import study as st
from relevance_lens.errors import InputError
from relevance_lens.locks import Busy, FileLock, exclusive, lock_file
from relevance_lens.store import Store, merge_stores
from relevance_lens.train.config import load_config
from relevance_lens.train.rundir import complete_checkpoints
from relevance_lens.train.trainer import train
from studyfix import run_study, sorted_rows, study_files, study_toml

FORK = multiprocessing.get_context("fork")
SRC = str(Path(__file__).parents[1] / "src")

STUDY = study_toml("locks")


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    make = study_files(tmp_path_factory.mktemp("locks"))
    return {**make.paths, "study": make("locks.toml", STUDY)}


@pytest.fixture(scope="module")
def reference(collection, tmp_path_factory):
    """The tiny study run once, by one process (on one thread, as the forked processes: float sums in one order)."""
    torch.set_num_threads(1)
    store, counts = run_study(collection["study"], tmp_path_factory.mktemp("reference"))
    return {"rows": sorted_rows(store), "counts": counts}


# ---------------------------------------------------------------- the lock


def _holder_process(path: Path) -> subprocess.Popen:
    """Another process holding the lock at ``path`` until killed (imports only the lock module)."""
    code = f"from relevance_lens.locks import FileLock; FileLock({str(path)!r}).acquire(); print('held', flush=True); "
    code += "import time; time.sleep(600)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC}
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_is_exclusive_names_its_holder_and_dies_with_a_sigkilled_one(tmp_path):
    path = tmp_path / ".run.lock"
    proc = _holder_process(path)
    try:
        lock = FileLock(path)
        assert not lock.acquire(0)
        started = time.monotonic()
        assert not lock.acquire(0.3)
        assert time.monotonic() - started >= 0.3
        with pytest.raises(Busy, match=f"run folder x: in use by pid {proc.pid} on ") as caught:
            with exclusive(path, "run folder x"):
                pass
        assert isinstance(caught.value, InputError) and "\n" not in str(caught.value)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert lock.acquire(5), "the kernel drops a SIGKILLed holder's lock"
        lock.release()
    finally:
        proc.kill()
        proc.wait()


def test_lock_is_reentrant_in_its_thread_only(tmp_path):
    path = tmp_path / ".cell.lock"
    outer, inner = FileLock(path), FileLock(path)
    assert outer.acquire(0) and inner.acquire(0)  # a study holding a run's lock calls train(), which locks again
    other: list[bool] = []
    thread = threading.Thread(target=lambda: other.append(FileLock(path).acquire(0)))
    thread.start()
    thread.join()
    assert other == [False]
    inner.release()
    assert outer.held()  # still held: one release per acquire
    outer.release()
    assert not outer.held()
    thread = threading.Thread(target=lambda: other.append(FileLock(path).acquire(0) and FileLock(path).release()))
    thread.start()
    thread.join()
    assert other == [False, None]  # the other thread could take it once released


# ---------------------------------------------------------------- train


def _stuck_training(settings: dict) -> None:
    """A forked ``train --resume`` that stops making progress after its checkpoint at step 2
    (batches after the third never come), so that it is surely still running when the test looks."""
    import relevance_lens.train.groups as groups

    collate, calls = groups.GroupCollator.__call__, []

    def stuck(self, batch):
        calls.append(1)
        if len(calls) > 3:  # one batch beyond step 2: the data loader fetches a batch ahead
            time.sleep(600)
        return collate(self, batch)

    groups.GroupCollator.__call__ = stuck
    train(load_config(None, **settings), resume=True, progress=False)


def test_second_train_on_one_folder_is_refused_naming_the_holder(collection, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    keys = ("model", "queries", "qrels", "corpus", "negatives_run")
    settings = dict(
        {k: collection[k] for k in keys},
        output=str(run_dir),
        data="files",
        group_size=4,
        queries_per_device=2,
        max_steps=6,
        save_steps=[2],
        max_length=64,
        precision="fp32",
        eval_split=None,
        rank=1,
        warmup_steps=0,
    )
    first = FORK.Process(target=_stuck_training, args=(settings,))
    first.start()
    try:
        deadline = time.time() + 120
        while not complete_checkpoints(run_dir) and first.is_alive() and time.time() < deadline:
            time.sleep(0.05)
        assert complete_checkpoints(run_dir) and first.is_alive()
        with pytest.raises(Busy, match=f"--output {run_dir}: in use by pid {first.pid} on "):
            train(load_config(None, **settings), resume=True, progress=False)
        # The command line: one line, exit code 2.
        from relevance_lens.cli import main

        monkeypatch.setattr(sys, "argv", ["relevance-lens", "train", "--output", str(run_dir), "--resume"])
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and f"in use by pid {first.pid}" in lines[0] and str(run_dir) in " ".join(lines)
        os.kill(first.pid, signal.SIGKILL)
        first.join()
        assert not (run_dir / "final").exists()
        # Its holder dead, the folder is free: the resume takes over from the last checkpoint and finishes.
        train(load_config(None, **settings), resume=True, progress=False)
        assert (run_dir / "final").is_dir()
        assert json.loads((run_dir / "train_summary.json").read_text())["steps"] == 6
    finally:
        first.kill()
        first.join()


# ---------------------------------------------------------------- studies


def _study_process(study_path: Path, workdir: Path, log: Path, shard=None):
    def target():
        _store, counts = run_study(study_path, workdir, shard=shard, log=log)
        log.with_suffix(".json").write_text(json.dumps(counts))

    process = FORK.Process(target=target)
    process.start()
    return process


def _baseline_lock(study_path: Path, workdir: Path) -> Path:
    cells = st.expand(st.load_study(study_path))
    baseline = next(c.run for c in cells if c.kind == "train" and "-head-" in c.run)
    return lock_file(workdir / st.RUNS / baseline)


def _meet_at_a_held_cell(study_path: Path, work: Path, logs: list[Path], shards: list | None = None) -> None:
    """Run one study process per log, all on ``work``, while the test holds the baseline run's lock;
    let go once every process has reported it as in progress elsewhere, then wait for them.

    The test's own hold is a holder that does nothing, like one that died: the processes must
    find the cell still undone once they get its lock, and do it.
    """
    with exclusive(_baseline_lock(study_path, work), "test gate"):
        processes = [_study_process(study_path, work, log, shard) for log, shard in zip(logs, shards or [None] * 9)]
        deadline = time.time() + 120
        while time.time() < deadline and all(p.is_alive() for p in processes):
            if all(log.is_file() and "in progress in another process:" in log.read_text() for log in logs):
                break
            time.sleep(0.05)
        else:
            for p in processes:
                p.kill()
            pytest.fail("the processes did not report the held cell: " + " | ".join(log.read_text() for log in logs))
    for p in processes:
        p.join(120)
        assert p.exitcode == 0, [log.read_text() for log in logs]


def test_two_study_runs_on_one_workdir_never_do_a_cell_twice(collection, reference, tmp_path):
    work = tmp_path / "work"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    _meet_at_a_held_cell(collection["study"], work, logs)
    counts = [json.loads(log.with_suffix(".json").read_text()) for log in logs]
    cells = reference["counts"]["cells"]
    assert all(c["cells"] == cells for c in counts)
    assert sum(c["ran"] for c in counts) == cells  # every cell run once, by one of them
    assert all(c["ran"] + c["skipped"] + c["elsewhere"] == cells for c in counts)  # each saw every cell done
    assert sorted_rows(work / "results.sqlite") == reference["rows"]


def test_two_shards_on_one_workdir_then_merge_equal_one_process(collection, reference, tmp_path):
    cells = st.expand(st.load_study(collection["study"]))
    # A shard count that splits the runs (balanced shards: 2 does): the LoRA run's
    # shard needs the baseline another shard owns, and both go for it.
    n = next(n for n in range(2, 9) if len({st.shard_of(c, n, cells) for c in cells}) > 1)
    shards = [i for i in range(n) if st.select(cells, (i, n))]
    work = tmp_path / "shared"
    logs = [tmp_path / f"shard{i}.log" for i in shards]
    _meet_at_a_held_cell(collection["study"], work, logs, [(i, n) for i in shards])
    stores = [work / f"results.shard-{i}-of-{n}.sqlite" for i in shards]
    assert all(0 < len(sorted_rows(s)) < len(reference["rows"]) for s in stores)
    merged = tmp_path / "merged.sqlite"
    merge_stores(merged, stores)
    assert sorted_rows(merged) == reference["rows"]


# ---------------------------------------------------------------- the store


def test_store_is_in_wal_mode_and_a_reader_does_not_block_an_append(tmp_path, monkeypatch):
    store = Store(tmp_path / "r.sqlite")
    row = {"run": "a", "analysis": "x", "metric": "m", "value": 1.0}
    store.append([row])
    connect = Store._connect

    def quick(self):  # fail in 0.2 s rather than after the 30 s busy timeout
        conn = connect(self)
        conn.execute("PRAGMA busy_timeout = 200")
        return conn

    monkeypatch.setattr(Store, "_connect", quick)
    with closing(sqlite3.connect(store.path)) as reader:
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        reader.execute("BEGIN")
        assert len(reader.execute("SELECT * FROM results").fetchall()) == 1  # a read transaction stays open
        store.append([{**row, "run": "b"}])  # rollback-journal mode: "database is locked"
        assert len(reader.execute("SELECT * FROM results").fetchall()) == 1  # the reader's snapshot is unchanged
    assert len(store.rows()) == 2
