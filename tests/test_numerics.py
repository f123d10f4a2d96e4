"""Numerics: training stops at a non-finite loss or weight keeping the last good checkpoint, scoring
refuses NaN/inf scores, the statistics refuse NaN and mismatched per-query values."""

from __future__ import annotations

import math

import pytest
import torch

from relevance_lens.data.formats import Passage
from relevance_lens.errors import InputError
from relevance_lens.evaluate.stats import holm, paired_randomization
from relevance_lens.score.config import ScoreConfig
from relevance_lens.score.fast import FastScorer
from relevance_lens.score.scorer import PlainScorer
from relevance_lens.train import trainer as trainer_module
from relevance_lens.train.config import load_config
from relevance_lens.train.rundir import complete_checkpoints
from tiny import tiny_reranker
from trainfix import tiny_collection, tiny_train_settings


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return tiny_collection(tmp_path_factory.mktemp("collection"))


def tiny_run(collection, output, **overrides):
    return load_config(None, **tiny_train_settings(collection, output, **overrides))


def poison_at(monkeypatch, call: int, poison) -> None:
    """Make the ``call``-th group loss (1-based: step ``call`` without accumulation) go through ``poison``."""
    real = trainer_module.group_loss
    calls = {"n": 0}

    def loss(scores, group_size):
        calls["n"] += 1
        value = real(scores, group_size)
        return poison(value) if calls["n"] == call else value

    monkeypatch.setattr(trainer_module, "group_loss", loss)


def assert_stopped_keeping(run_dir, steps: list[int]) -> None:
    assert [s for s, _ in complete_checkpoints(run_dir)] == steps
    assert not (run_dir / "final").exists() and not (run_dir / "train_summary.json").exists()


def test_a_nan_loss_stops_training_at_its_step_and_keeps_the_last_good_checkpoint(collection, tmp_path, monkeypatch):
    poison_at(monkeypatch, 3, lambda loss: loss * float("nan"))
    run_dir = tmp_path / "run"
    with pytest.raises(InputError, match=r"training step 3: the loss is nan") as info:
        trainer_module.train(tiny_run(collection, run_dir), progress=False)
    assert "\n" not in str(info.value)
    assert_stopped_keeping(run_dir, [1, 2])


class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose update poisons the weights."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def test_non_finite_weights_are_never_saved(collection, tmp_path, monkeypatch):
    poison_at(monkeypatch, 2, _NanGradient.apply)
    run_dir = tmp_path / "run"
    with pytest.raises(InputError, match=r"training step 2: trained weight .* is not finite"):
        trainer_module.train(tiny_run(collection, run_dir), progress=False)
    assert_stopped_keeping(run_dir, [1])


ITEMS = [("capital of france", Passage(str(i), "", text)) for i, text in enumerate(["paris is", "bananas", "apt"])]


@pytest.mark.parametrize("fast", [False, True])
def test_scoring_refuses_non_finite_scores(fast):
    config = ScoreConfig(dtype="fp32", device="cpu", compile="off")
    make = FastScorer if fast else PlainScorer
    reranker = tiny_reranker("llama").eval()
    assert all(math.isfinite(x) for x in make(reranker, config).score(ITEMS))
    with torch.no_grad():
        reranker.score.weight[0, 0] = float("inf")  # every score becomes +-inf or nan
    with pytest.raises(InputError, match=r"scoring: 3 of 3 scores in a batch are not finite") as info:
        make(reranker, config).score(ITEMS)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "a, b, message",
    [
        ([0.5, float("nan"), 0.2], [0.4, 0.3, 0.1], r"first system's value for query #1 is nan"),
        ([0.5, 0.3, 0.2], [0.4, float("inf"), 0.1], r"second system's value for query #1 is inf"),
    ],
)
def test_paired_test_refuses_non_finite_and_mismatched_values(a, b, message):
    with pytest.raises(InputError, match=message):
        paired_randomization(a, b, permutations=100)


def test_a_one_item_list_is_not_broadcast_against_a_longer_one():
    with pytest.raises(InputError, match=r"equal-length lists .* got 1 and 3"):
        paired_randomization([0.9], [0.4, 0.3, 0.1])  # numpy would compare 0.9 with each of them
    assert paired_randomization([0.5, 0.3, 0.2], [0.5, 0.3, 0.2]) == 1.0
    assert paired_randomization([1.0] * 12, [0.0] * 12, permutations=999) < 0.01


def test_holm_refuses_a_nan_p_value():
    with pytest.raises(InputError, match=r"p-value nan is not in \[0, 1\]"):
        holm([0.01, float("nan"), 0.2])
