"""Token attributions by integrated gradients: completeness on every family, the baselines, the
fine-tuned vs base + head comparison, the pairs chosen, the analysis rows and the report."""

import pytest
import torch

from dissectfix import lora_reranker, one_thread, randomize_lora, tiny_evalset  # noqa: F401
from relevance_lens.data.formats import Passage
from relevance_lens.dissect.attribute import chosen_pairs, integrated_gradients
from relevance_lens.dissect.registry import Context, Inputs, run_analysis
from relevance_lens.dissect.settings import AttributeSettings
from relevance_lens.dissect.switch import switch_off
from relevance_lens.errors import InputError
from tiny import FAMILIES

PAIR = ("paris capital", Passage("d1", "", "paris is the capital of france"))


def smooth_reranker(family: str):
    """A tiny LoRA reranker in fp64 with a small update: the tiny random models are sharp enough
    that the path integral needs thousands of nodes at the fixtures' usual scale (measured)."""
    reranker = lora_reranker(family)
    randomize_lora(reranker, "all", seed=1, scale=0.02)
    return reranker.double()


def _ids(reranker):
    return reranker.tokenize([reranker.format(PAIR[0], PAIR[1])])[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_completeness_attributions_sum_to_the_score_difference(family):
    reranker = smooth_reranker(family)
    ids = _ids(reranker)
    found = integrated_gradients(reranker, ids, "pad", steps=32, chunk=64, tolerance=0.01, max_steps=4096)
    assert len(found.values) == len(found.tokens) == len(ids)
    difference = found.score - found.baseline_score
    assert abs(difference) > 1e-3  # there is something to attribute
    assert sum(found.values) == pytest.approx(difference, rel=0.02, abs=1e-4)
    assert found.gap < 0.02
    scored = float(torch.tensor(reranker.score_pairs(*PAIR[:1], [PAIR[1]])[0]))
    assert found.score == pytest.approx(scored, rel=1e-6)  # F(x) is the reranker's own score


def test_few_steps_leave_a_gap_that_more_steps_close():
    """Completeness is a property of the exact integral: it is checked, not built in."""
    reranker = smooth_reranker("gpt2")
    ids = _ids(reranker)
    coarse = integrated_gradients(reranker, ids, "pad", steps=1)
    fine = integrated_gradients(reranker, ids, "pad", steps=64)
    assert fine.gap < 0.01 < coarse.gap


def test_default_settings_resolve_a_path_a_fixed_rule_does_not():
    """Gemma 3's score rises and falls steeply along the path (as the real SmolLM2 adapter's does):
    32 fixed nodes miss completeness by ~18% (measured, fp64); the analysis's defaults halve the
    sub-intervals that fail their own check until the gap is within tolerance."""
    reranker = smooth_reranker("gemma3")
    ids = _ids(reranker)
    defaults = AttributeSettings()
    fixed = integrated_gradients(reranker, ids, "pad", steps=defaults.steps)
    found = integrated_gradients(
        reranker, ids, "pad", steps=defaults.steps, tolerance=defaults.tolerance, max_steps=defaults.max_steps
    )
    assert fixed.gap > 0.1 and fixed.steps == defaults.steps
    assert found.gap < defaults.tolerance and defaults.steps < found.steps <= defaults.max_steps
    assert found.intervals > defaults.steps // 8


def test_the_budget_stops_refinement():
    reranker = smooth_reranker("gemma3")
    found = integrated_gradients(reranker, _ids(reranker), "pad", steps=32, tolerance=1e-9, max_steps=64)
    assert found.steps == 64 and found.gap > 1e-9
    with pytest.raises(InputError, match="max_steps 16 < steps 32"):
        integrated_gradients(reranker, _ids(reranker), "pad", steps=32, tolerance=0.05, max_steps=16)


@pytest.mark.parametrize("baseline", ["pad", "zero"])
def test_baseline_score_is_the_stated_baseline(baseline):
    reranker = smooth_reranker("gpt2")
    ids = _ids(reranker)
    found = integrated_gradients(reranker, ids, baseline, steps=4)
    if baseline == "pad":
        expected = reranker(**{k: v for k, v in reranker.collate([[reranker.pad_id] * len(ids)]).items()})
        assert found.baseline_score == pytest.approx(float(expected[0]), rel=1e-6)
    else:
        embeds = torch.zeros(1, len(ids), reranker.config.hidden_size, dtype=torch.float64)
        out = reranker.hidden_states(None, torch.ones(1, len(ids), dtype=torch.long), inputs_embeds=embeds)
        assert found.baseline_score == pytest.approx(float(reranker.score(out.last_hidden_state[:, -1])[0]), rel=1e-6)


def test_base_plus_head_attributes_differently():
    reranker = smooth_reranker("llama")
    ids = _ids(reranker)
    tuned = integrated_gradients(reranker, ids, "pad", steps=8)
    with switch_off(reranker, frozenset()):
        base = integrated_gradients(reranker, ids, "pad", steps=8)
    assert tuned.score != pytest.approx(base.score, abs=1e-4)
    assert not torch.allclose(torch.tensor(tuned.values), torch.tensor(base.values), atol=1e-4)


def test_settings_and_queries_are_checked():
    with pytest.raises(InputError, match="baseline 'mean'"):
        AttributeSettings(baseline="mean")
    with pytest.raises(InputError, match="steps 0"):
        AttributeSettings(steps=0)
    with pytest.raises(InputError, match="max_steps 8 < steps 32"):
        AttributeSettings(max_steps=8)
    with pytest.raises(InputError, match="--query-id nope: not a scored query of tiny"):
        chosen_pairs(tiny_evalset(), ["nope"], 1)
    with pytest.raises(InputError, match="baseline 'x'"):
        integrated_gradients(smooth_reranker("gpt2"), [1, 2, 3], "x")


def test_chosen_pairs_are_a_relevant_and_a_non_relevant_passage():
    evalset = tiny_evalset(depth=3)
    pairs = chosen_pairs(evalset, [], 2)
    assert [q for q, _ in pairs] == ["q0", "q0", "q1", "q1"]
    assert [evalset.qrels[q].get(d, 0) > 0 for q, d in pairs] == [True, False, True, False]


def test_attribute_analysis_rows_and_report(tmp_path, monkeypatch):
    from relevance_lens.dissect import attribute as attribute_module
    from relevance_lens.report.attribute_sections import attribute_section
    from relevance_lens.report.results import Results, read_rows
    from relevance_lens.store import Store

    reranker = smooth_reranker("llama")
    folder = tmp_path / "run" / "final"
    reranker.float().save(folder)
    monkeypatch.setattr(attribute_module, "load_reranker", lambda *a, **k: reranker.double())
    store = Store(tmp_path / "r.sqlite")
    settings = AttributeSettings(pairs=1, steps=16, tolerance=0.5)
    rows = run_analysis("attribute", Inputs(folder, tiny_evalset(depth=3), ["nDCG@10"]), settings, Context(store=store))
    variants = {r["variant"] for r in rows}
    assert {v.split()[0] for v in variants} == {"adapter", "head-base"} and len(variants) == 4
    tokens = [r for r in rows if r["metric"] == "attribution" and r["variant"] == sorted(variants)[0]]
    assert [r["layer"] for r in tokens] == list(range(len(tokens))) and all(r["role"] is not None for r in tokens)
    gaps = [r["value"] for r in rows if r["metric"] == "completeness_gap"]
    assert len(gaps) == 4 and all(g < 0.5 for g in gaps)
    assert len([r for r in rows if r["metric"] == "steps" and r["value"] >= 16]) == 4  # steps taken, per pair
    section = attribute_section(Results(read_rows(tmp_path / "r.sqlite")))
    assert section.body is not None
    assert section.body.count("<span") == sum(r["metric"] == "attribution" for r in rows)  # every token shown
    assert "fine-tuned" in section.body and "base + head" in section.body
