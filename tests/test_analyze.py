"""The analyses end to end on a fake training run of a tiny model, through the store and the CLI."""

import json

import pytest
import torch
from typer.testing import CliRunner

from dissectfix import DISSECT_FAMILIES, bare_reranker, lora_reranker, one_thread, randomize_lora, tiny_evalset  # noqa: F401
from relevance_lens.cli import app
from relevance_lens.data.formats import write_corpus, write_qrels, write_queries, write_run
from relevance_lens.dissect import analyses as analyze
from relevance_lens.dissect.analyses import (
    analyze_ablate,
    analyze_checkpoints,
    analyze_lens,
    analyze_weights,
    describe_adapter,
)
from relevance_lens.dissect.evalset import encode_evalset, ir_metrics, mean
from relevance_lens.dissect.switch import lora_modules, switch_off
from relevance_lens.errors import InputError
from relevance_lens.model.lora import LoraSettings, attach_lora
from relevance_lens.model.reranker import Reranker
from relevance_lens.score.batching import run_from_scores
from relevance_lens.score.rerank import ScoreConfig
from relevance_lens.score.scorer import PlainScorer
from relevance_lens.store import Store
from tiny import save_tiny

FP32 = ScoreConfig(depth=3, dtype="fp32", device="cpu")
METRICS = ["RR@10", "nDCG@10"]


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """RUN/checkpoint-5, checkpoint-10, final (= step 10) and a head-only BASELINE/final."""
    root = tmp_path_factory.mktemp("analyze")
    base = save_tiny("llama", root / "base")
    record = {"config": {"model": str(base), "rank": 2, "targets": "all"}}
    run = root / "r2-all"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(record))
    reranker = Reranker.from_pretrained(str(base))
    attach_lora(reranker, LoraSettings(rank=2, targets="all", dropout=0.0))
    for step, seed in ((5, 1), (10, 2)):
        randomize_lora(reranker, seed=seed)
        reranker.save(run / f"checkpoint-{step}", extra={"run": record, "step": step})
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    reranker.save(run / "final", extra={"run": record, "step": 10})
    head_only = Reranker.from_pretrained(str(base))
    randomize_lora(head_only, seed=3)
    head_only.save(root / "head-only" / "final", extra={"run": {"config": {**record["config"], "targets": "none"}}})
    return {"root": root, "run": run, "baseline": root / "head-only"}


def test_describe_adapter(fake_run):
    info = describe_adapter(fake_run["run"] / "checkpoint-5")
    assert (info.run, info.checkpoint, info.rank, info.targets) == ("r2-all", "checkpoint-5", 2, "all")
    base = describe_adapter(fake_run["baseline"] / "final")
    assert (base.run, base.checkpoint, base.rank, base.targets) == ("head-only", "final", None, "none")
    with pytest.raises(InputError, match="no score_head.safetensors"):
        describe_adapter(fake_run["root"] / "base")


def _direct(folder, evalset):
    """Metrics of an adapter scored the ordinary way, to check the analyses against."""
    reranker = Reranker.from_pretrained(adapter=folder).eval()
    encoded = encode_evalset(reranker, evalset)
    run = run_from_scores(encoded.pairs, PlainScorer(reranker).score_encoded(encoded))
    return {m: mean(fn(run)) for m, fn in ir_metrics(evalset, METRICS).items()}


def test_checkpoints_with_bm25_and_baseline_and_rerun_skips(fake_run, tmp_path, monkeypatch):
    evalset = tiny_evalset()
    store = Store(tmp_path / "results.sqlite")
    rows = analyze_checkpoints(
        fake_run["run"], evalset, METRICS, baseline_run_dir=fake_run["baseline"], store=store, score=FP32
    )
    got = {(r["run"], r["checkpoint"], r["metric"]): r for r in rows}
    assert {(run, c) for run, c, _ in got} == {
        ("r2-all", "bm25"),
        ("r2-all", "checkpoint-5"),
        ("r2-all", "checkpoint-10"),
        ("r2-all", "final"),
        ("head-only", "final"),
    }
    final = _direct(fake_run["run"] / "final", evalset)
    assert got["r2-all", "final", "RR@10"]["value"] == pytest.approx(final["RR@10"], abs=1e-6)
    assert got["r2-all", "checkpoint-10", "nDCG@10"]["value"] == pytest.approx(final["nDCG@10"], abs=1e-6)
    assert got["head-only", "final", "RR@10"]["value"] == pytest.approx(
        _direct(fake_run["baseline"] / "final", evalset)["RR@10"]
    )
    bm25 = {m: mean(fn(evalset.first_stage())) for m, fn in ir_metrics(evalset, METRICS).items()}
    assert got["r2-all", "bm25", "RR@10"]["value"] == pytest.approx(bm25["RR@10"])
    assert 0 < got["r2-all", "final", "RR@10"]["p_value"] <= 1

    forwards = []
    real = analyze.PlainScorer.score_encoded
    monkeypatch.setattr(analyze.PlainScorer, "score_encoded", lambda self, e: forwards.append(1) or real(self, e))
    analyze_checkpoints(fake_run["run"], evalset, METRICS, score=FP32)
    assert len(forwards) == 2  # checkpoint-5 and checkpoint-10; final/ holds checkpoint-10's weights

    scored = []
    monkeypatch.setattr(analyze, "_score_folders", lambda items, *a: scored.extend(items) or [])
    again = analyze_checkpoints(
        fake_run["run"], evalset, METRICS, baseline_run_dir=fake_run["baseline"], store=store, score=FP32
    )
    assert scored == [] and len(again) == len(rows) and len(store.rows()) == len(rows)


def test_versus_bm25_tests_every_checkpoint_against_the_first_stage(fake_run, tmp_path):
    """With a baseline, ``versus="bm25"`` gives each checkpoint the p-value a run without one gets."""
    evalset = tiny_evalset()
    alone = analyze_checkpoints(fake_run["run"], evalset, METRICS, score=FP32)
    both = analyze_checkpoints(
        fake_run["run"], evalset, METRICS, baseline_run_dir=fake_run["baseline"], versus="bm25", score=FP32
    )
    vs_base = analyze_checkpoints(fake_run["run"], evalset, METRICS, baseline_run_dir=fake_run["baseline"], score=FP32)
    p = {name: {(r["run"], r["checkpoint"], r["metric"]): r["p_value"] for r in rows} for name, rows in
         (("alone", alone), ("both", both), ("base", vs_base))}  # fmt: skip
    for key, value in p["alone"].items():
        assert p["both"][key] == value
    assert ("head-only", "final", "RR@10") in p["both"]
    assert any(p["base"][k] != p["alone"][k] for k in p["alone"] if k[1] != "bm25")


@pytest.mark.parametrize(
    "compile_setting,expected",
    [("off", "merged weights, eager blocks (compile=off)"), ("auto", "merged weights, eager blocks (compile=auto: ")],
)
def test_checkpoints_say_how_they_were_scored(fake_run, compile_setting, expected, monkeypatch):
    """Under the table, one line a run: merged or not, compiled or eager, and why (the figures of compile=auto)."""
    from rich.console import Console

    monkeypatch.setenv("RELEVANCE_LENS_CALIBRATION", "off")  # the priors: a tiny job never pays a compile
    console = Console(record=True, width=400)
    config = ScoreConfig(depth=3, dtype="fp32", device="cpu", compile=compile_setting)
    analyze_checkpoints(fake_run["run"], tiny_evalset(), METRICS, baseline_run_dir=fake_run["baseline"], score=config,
                        console=console)  # fmt: skip
    lines = console.export_text().splitlines()
    assert any(line.startswith(f"r2-all: scored on {expected}") for line in lines), lines[-3:]
    assert "head-only: scored on the plain forward (no LoRA)" in lines
    if compile_setting == "auto":
        assert any("tokens < 100,000 (prior" in line for line in lines)


def test_ablate_rows_agree_with_the_checkpoint_scores(fake_run, tmp_path, monkeypatch):
    evalset = tiny_evalset()
    store = Store(tmp_path / "results.sqlite")
    rows = analyze_ablate(fake_run["run"] / "final", evalset, ["drop-layer", "roles"], METRICS, store=store, score=FP32)
    by = {(r["analysis"], r["variant"], r["metric"]): r for r in rows}
    final = _direct(fake_run["run"] / "final", evalset)
    assert by["ablate:drop-layer", "full", "RR@10"]["value"] == pytest.approx(final["RR@10"], abs=1e-6)
    assert by["ablate:drop-layer", "-L2", "RR@10 Δfull"]["value"] == pytest.approx(
        by["ablate:drop-layer", "-L2", "RR@10"]["value"] - final["RR@10"], abs=1e-6
    )
    assert by["ablate:drop-layer", "-L2", "RR@10"]["layer"] == 2 and by["ablate:roles", "-up", "RR@10"]["role"] == "up"
    # The two sweeps ran in one pass, but each stores the saving it has run alone (so that a study
    # killed between them stores the same rows): drop-layer restarts from cached blocks, roles cannot.
    assert by["ablate:drop-layer", None, "work_saved"]["value"] > 0.2
    assert by["ablate:roles", None, "work_saved"]["value"] == 0.0
    assert len(store.rows()) == len(rows)
    skipped = lambda *a, **k: pytest.fail("should have been skipped")  # noqa: E731
    monkeypatch.setattr("relevance_lens.dissect.analyses.run_sweeps", skipped)
    assert len(
        analyze_ablate(fake_run["run"] / "final", evalset, ["drop-layer"], METRICS, store=store, score=FP32)
    ) == len([r for r in rows if r["analysis"] == "ablate:drop-layer"])


def test_weights_of_a_run_compare_each_checkpoint_with_final(fake_run, tmp_path):
    rows = analyze_weights(fake_run["run"], store=Store(tmp_path / "results.sqlite"))
    weights = [r for r in rows if r["analysis"] == "weights" and r["metric"] == "frobenius"]
    assert {r["checkpoint"] for r in weights} == {"checkpoint-5", "checkpoint-10", "final"}
    assert len(weights) == 3 * 28 and all(r["value"] > 0 for r in weights)
    phi = {(r["checkpoint"], r["layer"], r["role"]): r["value"] for r in rows if r["metric"] == "phi_mean"}
    assert all(v == pytest.approx(1.0) for (c, _, _), v in phi.items() if c == "checkpoint-10")  # same weights as final
    assert all(v < 0.99 for (c, _, _), v in phi.items() if c == "checkpoint-5")
    assert {r["variant"] for r in rows if r["analysis"] == "subspace"} == {"r2-all/final"}


def test_lens_rows_end_at_the_models_metric(fake_run, tmp_path):
    evalset = tiny_evalset()
    store = Store(tmp_path / "results.sqlite")
    rows = analyze_lens(fake_run["run"] / "final", evalset, METRICS, store=store, score=FP32)
    head = {(r["layer"], r["metric"]): r["value"] for r in rows if r["variant"] == "head"}
    assert sorted({layer for layer, _ in head}) == [0, 1, 2, 3, 4]
    final = _direct(fake_run["run"] / "final", evalset)
    assert head[4, "RR@10"] == pytest.approx(final["RR@10"], abs=1e-6)
    frozen = analyze_lens(fake_run["run"] / "final", evalset, METRICS, adapter_off=True, store=store, score=FP32)
    base = analyze_ablate(fake_run["run"] / "final", evalset, ["keep-layer"], METRICS, score=FP32)
    base_rr = next(r["value"] for r in base if r["variant"] == "base" and r["metric"] == "RR@10")
    assert next(r["value"] for r in frozen if r["layer"] == 4 and r["metric"] == "RR@10") == pytest.approx(
        base_rr, abs=1e-6
    )


def test_cli_analyze_commands(fake_run, tmp_path):
    evalset = tiny_evalset()
    files = {
        "queries": tmp_path / "q.tsv",
        "qrels": tmp_path / "qrels.txt",
        "corpus": tmp_path / "c.jsonl",
        "run": tmp_path / "bm25.run",
    }
    write_queries(evalset.queries, files["queries"])
    write_qrels(evalset.qrels, files["qrels"])
    write_corpus(evalset.corpus, files["corpus"])
    write_run(evalset.run, files["run"])
    eval_args = [a for k, v in files.items() for a in (f"--{k}", str(v))] + ["--depth", "3", "--dtype", "fp32"]
    db = tmp_path / "results.sqlite"
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["analyze", "ablate", str(fake_run["run"] / "final"), "--sweep", "top-down", "--store", str(db), *eval_args],
    )
    assert result.exit_code == 0, result.output
    assert "L2-3" in result.output and Store(db).has("r2-all", "ablate:top-down")
    result = runner.invoke(app, ["analyze", "weights", str(fake_run["run"] / "final"), "--store", str(db)])
    assert result.exit_code == 0 and "||ΔW||_F (effective rank)" in result.output
    result = runner.invoke(
        app, ["analyze", "ablate", str(fake_run["run"] / "final"), "--sweep", "layers", "--store", str(db), *eval_args]
    )
    assert isinstance(result.exception, InputError) and "expected one of drop-layer" in str(result.exception)
    result = runner.invoke(
        app, ["analyze", "lens", str(fake_run["run"] / "final"), "--split", "dev", "--queries", str(files["queries"])]
    )
    assert isinstance(result.exception, InputError) and "not both" in str(result.exception)


@pytest.mark.parametrize("family", DISSECT_FAMILIES)
@pytest.mark.parametrize("targets", ["all", "q"])
def test_checkpoint_scores_through_merged_weights_equal_the_lora_layers(family, targets):
    """The checkpoint evaluation's fast path (W + ΔW in the base weights, LoRA taken out) against the
    plain LoRA forward, in fp32: summation order only. The base weights are the base's again after."""
    reranker = lora_reranker(family, targets=targets)
    weights = [module.get_base_layer().weight for module, _, _ in lora_modules(reranker).values()]
    before = [w.detach().clone() for w in weights]
    encoded = encode_evalset(reranker, tiny_evalset(depth=3), max_batch=6)
    plain = PlainScorer(reranker).score_encoded(encoded)
    with switch_off(reranker, frozenset()):  # the check has teeth: the update moves the scores
        bare = PlainScorer(reranker).score_encoded(encoded)
    assert bare != pytest.approx(plain, abs=1e-3)
    fast, merged = analyze.checkpoint_scores(reranker, encoded, FP32)
    assert merged and not hasattr(reranker.backbone, "peft_config")
    assert fast == pytest.approx(plain, abs=1e-4 * max(1.0, max(abs(x) for x in plain)))
    assert all(torch.equal(w, b) for w, b in zip(weights, before))
    assert PlainScorer(reranker).score_encoded(encoded) == pytest.approx(bare, abs=1e-5)  # the bare base again


@pytest.mark.slow
def test_compiled_checkpoint_scoring_equals_eager_for_every_checkpoint():
    """Blocks compiled once serve every checkpoint (weights swapped under them): each checkpoint's
    scores equal its uncompiled merged scores."""
    compiled = ScoreConfig(depth=3, dtype="fp32", device="cpu", compile="on")
    base = bare_reranker("llama")
    encoded = encode_evalset(base, tiny_evalset(depth=3), max_batch=6)
    results = {}
    for seed in (1, 2):
        for config in (FP32, compiled):
            reranker = base if config is compiled else bare_reranker("llama")
            attach_lora(reranker, LoraSettings(rank=2, targets="all", dropout=0.0))
            randomize_lora(reranker, seed=seed)
            results[seed, config.compile] = analyze.checkpoint_scores(reranker, encoded, config)[0]
    assert getattr(base, "_blocks_compiled", False)
    for seed in (1, 2):
        scale = max(1.0, max(abs(x) for x in results[seed, "auto"]))
        assert results[seed, "on"] == pytest.approx(results[seed, "auto"], abs=1e-4 * scale), seed
    assert results[1, "on"] != pytest.approx(results[2, "on"], abs=1e-3)


def test_checkpoint_scores_take_the_plain_path_when_asked_or_without_lora():
    reranker = lora_reranker("llama")
    encoded = encode_evalset(reranker, tiny_evalset(depth=3))
    plain = PlainScorer(reranker).score_encoded(encoded)
    for config in (
        ScoreConfig(depth=3, dtype="fp32", fast=False),
        ScoreConfig(depth=3, dtype="fp32", merge_lora=False),
    ):
        assert analyze.checkpoint_scores(reranker, encoded, config) == (plain, False)
    head_only = bare_reranker("llama")
    encoded = encode_evalset(head_only, tiny_evalset(depth=3))
    assert analyze.checkpoint_scores(head_only, encoded, FP32) == (PlainScorer(head_only).score_encoded(encoded), False)
