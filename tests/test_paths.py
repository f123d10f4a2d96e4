"""compile="auto" chooses from this machine's measured figures (score.paths); forced choices stay possible."""

from __future__ import annotations

import json
import multiprocessing

import pytest
import torch

from relevance_lens.score.config import ScoreConfig
from relevance_lens.score.fast import FastScorer
from relevance_lens.score.paths import (
    PRIOR_MIN_TOKENS,
    PRIOR_SPEEDUP,
    BatchTimer,
    Calibration,
    calibration_file,
    calibration_key,
    choose_compile,
    lookup,
    record,
)
from relevance_lens.score.scorer import PlainScorer
from test_fastscore import ITEMS, assert_close, lora_reranker


@pytest.fixture
def calibration(tmp_path, monkeypatch):
    path = tmp_path / "paths.json"
    monkeypatch.setenv("RELEVANCE_LENS_CALIBRATION", str(path))
    return path


@pytest.mark.parametrize(
    "figures, tokens, compiles",
    [
        # Nothing measured: the prior token count decides.
        ({}, PRIOR_MIN_TOKENS - 1, False),
        ({}, PRIOR_MIN_TOKENS, True),
        # Both rates measured: 1 ms/token saved, 20 s to compile -> pays from 20,000 tokens.
        ({"eager_s_per_token": 2e-3, "compiled_s_per_token": 1e-3, "compile_s": 20.0, "runs": 2}, 19_000, False),
        ({"eager_s_per_token": 2e-3, "compiled_s_per_token": 1e-3, "compile_s": 20.0, "runs": 2}, 21_000, True),
        # A warm inductor cache (cheap compile) makes a small job worth compiling.
        ({"eager_s_per_token": 2e-3, "compiled_s_per_token": 1e-3, "compile_s": 2.0, "runs": 2}, 3_000, True),
        # Compiled blocks no faster here: never worth a compile, however large the job.
        ({"eager_s_per_token": 1e-3, "compiled_s_per_token": 1.1e-3, "compile_s": 1.0, "runs": 2}, 10**9, False),
    ],
)
def test_choice_follows_the_figures(figures, tokens, compiles):
    choice = choose_compile(Calibration(**figures), tokens)
    assert choice.compile is compiles
    assert choice.reason


def test_one_measured_rate_borrows_the_prior_speedup():
    """Only the eager rate measured (no compiled run yet): the compiled one is eager / PRIOR_SPEEDUP."""
    eager = 3e-3
    choice = choose_compile(Calibration(eager_s_per_token=eager, compile_s=10.0, runs=1), 10_000)
    assert choice.saved_s == pytest.approx(10_000 * (eager - eager / PRIOR_SPEEDUP))


def test_record_blends_and_counts(calibration):
    record("k", eager_s_per_token=2e-3)
    record("k", eager_s_per_token=4e-3, compiled_s_per_token=1e-3, compile_s=30.0)
    record("k", compile_s=5.0)  # a warm compile: the last one stands
    got = lookup("k")
    assert got.eager_s_per_token == pytest.approx(3e-3)
    assert got.compiled_s_per_token == pytest.approx(1e-3)
    assert got.compile_s == 5.0 and got.runs == 3
    assert lookup("other key") == Calibration()


def test_damaged_calibration_is_set_aside(calibration):
    calibration.write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable scoring calibration"):
        assert lookup("k") == Calibration()
    with pytest.warns(UserWarning):
        record("k", eager_s_per_token=1e-3)
    assert json.loads(calibration.read_text())["k"]["eager_s_per_token"] == 1e-3


def test_off_records_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RELEVANCE_LENS_CALIBRATION", "off")
    assert calibration_file() is None
    record("k", eager_s_per_token=1e-3)
    assert lookup("k") == Calibration() and not list(tmp_path.iterdir())


def _record_many(n: int) -> None:
    for _ in range(n):
        record("shared", eager_s_per_token=1e-3)


def test_concurrent_records_are_all_kept(calibration):
    """Two processes folding records into one file: the lock keeps every one (runs counts them)."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(20,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert lookup("shared").runs == 40


def test_batch_timer_separates_the_compile_stall():
    timer = BatchTimer()
    timer.add(0, 0.5)  # a shared prefix's forward: time without tokens of its own
    timer.add(1000, 31.0)  # the first compiled batch: ~30 s of compile
    for _ in range(5):
        timer.add(1000, 1.0)
    assert timer.steady_s_per_token() == pytest.approx(1e-3)
    assert timer.stall_s() == pytest.approx(30.0)


def test_key_names_machine_model_and_dtype():
    reranker = lora_reranker("llama")
    key = calibration_key(reranker, torch.device("cpu"), torch.float32)
    assert "llama" in key and "float32" in key and f"{torch.get_num_threads()} threads" in key
    assert key != calibration_key(reranker, torch.device("cpu"), torch.bfloat16)


def test_scoring_runs_fill_the_calibration(calibration):
    """An eager fast run records its seconds per token under the model's key; the next choice uses it."""
    reranker = lora_reranker("llama")
    scorer = FastScorer(reranker, ScoreConfig(dtype="fp32", device="cpu", compile="off", batch_tokens=64))
    scorer.score(ITEMS)
    figures = lookup(scorer.key)
    assert figures.runs == 1 and figures.eager_s_per_token > 0 and figures.compiled_s_per_token is None
    # A measured compile far dearer than any saving keeps auto eager, and the plan says why.
    record(scorer.key, compiled_s_per_token=figures.eager_s_per_token / 2, compile_s=1e9)
    auto = FastScorer(reranker, ScoreConfig(dtype="fp32", device="cpu"), expected_tokens=10**7)
    assert not auto.plan.compiled and "all measured here" in auto.plan.compile_reason


def test_forced_choice_overrides_the_calibration(calibration):
    reranker = lora_reranker("llama")
    key = FastScorer(reranker, ScoreConfig(dtype="fp32", device="cpu", compile="off")).key
    record(key, eager_s_per_token=1.0, compiled_s_per_token=1e-6, compile_s=0.0)  # compiling always pays
    assert FastScorer(reranker, ScoreConfig(dtype="fp32", device="cpu"), expected_tokens=10).plan.compiled
    assert not FastScorer(
        reranker, ScoreConfig(dtype="fp32", device="cpu", compile="off"), expected_tokens=10
    ).plan.compiled
    record(key, compile_s=1e9)  # compiling never pays
    assert not FastScorer(reranker, ScoreConfig(dtype="fp32", device="cpu"), expected_tokens=10**7).plan.compiled
    assert FastScorer(reranker, ScoreConfig(dtype="fp32", device="cpu", compile="on"), expected_tokens=10).plan.compiled


@pytest.mark.slow
def test_path_chosen_from_calibration_scores_like_plain(calibration):
    """Whatever auto chooses gives the plain path's scores: here it chooses compiled blocks."""
    reranker = lora_reranker("llama")
    slow = PlainScorer(reranker, ScoreConfig(dtype="fp32", device="cpu", fast=False)).score(ITEMS)
    key = FastScorer(reranker, ScoreConfig(dtype="fp32", device="cpu", compile="off")).key
    record(key, eager_s_per_token=1.0, compiled_s_per_token=1e-6, compile_s=0.0)
    scorer = FastScorer(reranker, ScoreConfig(dtype="fp32", device="cpu", batch_tokens=64), expected_tokens=100)
    assert scorer.plan.compiled
    assert_close(scorer.score(ITEMS), slow)


def test_only_the_first_call_measures_the_compile(calibration, monkeypatch):
    """rerank scores chunk by chunk: the second chunk's blocks are compiled already, so its stall
    (none) must not overwrite the compile's measured cost."""
    import relevance_lens.score.fast as fast

    reranker = lora_reranker("llama")
    scorer = FastScorer(reranker, ScoreConfig(dtype="fp32", device="cpu", compile="off", batch_tokens=64))
    scorer.plan.compiled = True  # timings as a compiled run reports them, without compiling a tiny model
    seen = []
    monkeypatch.setattr(fast, "record", lambda key, **figures: seen.append(figures["compile_s"]))
    for _ in range(2):
        timer = BatchTimer()
        timer.add(100, 5.0)
        for _ in range(4):
            timer.add(100, 0.1)
        scorer._record(timer)
    assert seen == [pytest.approx(4.9), None]
