"""Thread pools sized to the cores that relevance-lens processes share (relevance_lens.threads)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from relevance_lens import threads
from relevance_lens.errors import InputError
from relevance_lens.train.config import load_config
from relevance_lens.train.trainer import train
from trainfix import tiny_collection, tiny_train_settings

SRC = str(Path(__file__).parents[1] / "src")


@pytest.fixture
def four_cores(tmp_path, monkeypatch):
    """A private registry, four cores available and a ceiling of four threads; torch's count restored after."""
    before = torch.get_num_threads()
    monkeypatch.setenv(threads.DIR_ENV, str(tmp_path / "cores"))
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "cores_available", lambda: 4)
    torch.set_num_threads(4)
    yield tmp_path / "cores"
    torch.set_num_threads(before)


def _other_process(registry: Path) -> subprocess.Popen:
    """Another working relevance-lens process: registered until killed."""
    code = "from relevance_lens.threads import share_cores\nimport time\nwith share_cores():\n"
    code += "    print('registered', flush=True)\n    time.sleep(600)\n"
    env = {**os.environ, "PYTHONPATH": SRC, threads.DIR_ENV: str(registry)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "registered"
    return child


def test_a_second_process_halves_the_pool_and_its_death_gives_the_cores_back(four_cores):
    with threads.share_cores() as started:
        assert started == 4 and threads.live_processes() == 1
        other = _other_process(four_cores)
        try:
            assert threads.live_processes() == 2
            assert threads.fit() == 2 and torch.get_num_threads() == 2
        finally:
            other.send_signal(signal.SIGKILL)
            other.wait()
        # SIGKILL: the kernel dropped its lock, so its file is a dead process's and is removed.
        assert threads.fit() == 4 and threads.live_processes() == 1
        assert len(list(four_cores.glob("*.cores"))) == 1
    assert not list(four_cores.glob("*.cores")), "leaving the outermost block drops the registration"
    assert torch.get_num_threads() == 4


def test_the_users_thread_count_is_a_ceiling(four_cores):
    torch.set_num_threads(1)
    with threads.share_cores() as started:
        assert started == 1 and threads.fit() == 1
    assert torch.get_num_threads() == 1


def test_torchrun_local_world_counts_as_sharers(four_cores, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with threads.share_cores() as started:
        assert started == 1


def test_nested_blocks_register_once(four_cores):
    with threads.share_cores(), threads.share_cores():
        assert threads.live_processes() == 1 and len(list(four_cores.glob("*.cores"))) == 1
    assert threads.live_processes() == 0


@pytest.mark.parametrize(("value", "expected"), [("3", 3), ("off", 4), ("auto", 4), ("", 4)])
def test_pinned_thread_counts(four_cores, monkeypatch, value, expected):
    monkeypatch.setenv(threads.ENV, value)
    with threads.share_cores() as started:
        assert started == expected and torch.get_num_threads() == expected
    if value in ("3", "off"):
        assert not four_cores.exists() or not list(four_cores.glob("*.cores")), "a pinned process does not register"


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_pin_is_one_line_naming_the_setting(four_cores, monkeypatch, value):
    monkeypatch.setenv(threads.ENV, value)
    with pytest.raises(InputError, match=rf"RELEVANCE_LENS_THREADS={value!r}: expected a positive number"):
        threads.pinned()


def test_training_takes_its_share_and_records_it(four_cores, tmp_path):
    collection = tiny_collection(tmp_path / "collection")
    other = _other_process(four_cores)
    try:
        config = load_config(None, **tiny_train_settings(collection, tmp_path / "run", max_steps=2, save_steps=[1]))
        run_dir = train(config, progress=False)
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["resolved"]["threads"] == {"at_start": 2, "cores": 4}
    assert torch.get_num_threads() == 4, "the pool is given back after training"
