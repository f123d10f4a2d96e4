"""Smoke versions of the benchmarks (tiny model, few items): correctness and output files, never timings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tiny import save_tiny, tiny_reranker

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_scoring  # noqa: E402
import common  # noqa: E402
import peers  # noqa: E402
from relevance_lens.data.formats import Passage  # noqa: E402

# Byte-level tiny tokenizer: FAQ queries run to ~100 tokens. The peers truncate a pair
# longest-first (both halves when both exceed half the budget), we truncate the end; 400 tokens
# keeps every query under half, where the two agree (the token-id check would stop a mismatch).
TINY_ARGS = ["--max-length", "400", "--queries", "2", "--depth", "3"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


# ---------------------------------------------------------------- fast: the checks themselves


def test_ranking_check_fails_loudly():
    pairs = [("q", "a"), ("q", "b"), ("q", "c")]
    reference = [3.0, 2.0, 1.0]
    assert bench_scoring.compare("same", "fp32", pairs, reference, [3.0, 2.0, 1.0])["ranking_flips"] == 0
    with pytest.raises(common.BenchmarkError, match="disagrees"):
        bench_scoring.compare("swapped", "bf16", pairs, reference, [1.0, 2.0, 3.0])
    with pytest.raises(common.BenchmarkError, match="disagrees"):
        bench_scoring.compare("off", "fp32", pairs, reference, [3.0, 2.0, 1.1])


def test_token_id_check_fails_loudly():
    with pytest.raises(common.BenchmarkError, match="other token ids"):
        peers.check_same_inputs([[1, 2, 3]], {"peer": [[1, 2, 4]]})
    peers.check_same_inputs([[1, 2, 3]], {"peer": [[1, 2, 3]]})


def test_pair_tokenizer_reproduces_our_ids():
    reranker = tiny_reranker("llama")
    passages = [Passage("d1", "perl", "regular expressions match text"), Passage("d2", "", "apt installs packages")]
    pairs = [peers.split_pair(reranker.settings, "how do i sort", p) for p in passages]
    ours = reranker.tokenize([reranker.format("how do i sort", p) for p in passages])
    with_eos = peers.pair_tokenizer(reranker.tokenizer, append_eos=True)
    got = [with_eos(a, b)["input_ids"] for a, b in pairs]
    assert got == ours
    assert peers.tevatron_ids(peers.pair_tokenizer(reranker.tokenizer, append_eos=False), pairs, 128) == ours
    assert peers.pad_token_id(reranker.tokenizer) != reranker.tokenizer.eos_token_id


def test_forward_flops_counts_dense_and_attention():
    reranker = tiny_reranker("llama")
    flops = bench_scoring.forward_flops(reranker, [10, 20])
    embed = reranker.base_model.get_input_embeddings().weight.numel()
    params = sum(p.numel() for p in reranker.base_model.parameters()) - embed
    assert flops["dense"] == 2 * params * 30
    assert flops["attention"] == 2 * 4 * 4 * 8 * (10**2 + 20**2)  # layers, heads, head_dim
    assert flops["total"] == flops["dense"] + flops["attention"]


def _lora_reranker(family: str, targets: str, layers=None):
    """A tiny reranker set up as training sets it: frozen backbone, LoRA with random B, trainable head."""
    import torch

    from relevance_lens.model.lora import LoraSettings, attach_lora

    reranker = tiny_reranker(family)
    reranker.base_model.set_attn_implementation("eager")  # FlopCounterMode does not count SDPA's CPU kernels
    reranker.backbone.requires_grad_(False)
    attach_lora(reranker, LoraSettings(rank=4, alpha=8, dropout=0.0, targets=targets, layers=layers))
    with torch.no_grad():
        for name, p in reranker.named_parameters():
            if "lora_B" in name:
                p.normal_()
    reranker.score.requires_grad_(True)
    return reranker


@pytest.mark.parametrize(
    "family, targets, layers",
    [("llama", "all", None), ("llama", "mlp", None), ("llama", "all", [2, 3]), ("llama", "none", None)]
    + [("gpt_neox", "all", None), ("gpt2", "mha", None)],
)
def test_step_flops_equal_flop_counter_over_a_real_step(family, targets, layers):
    """The step's formula against torch's FlopCounterMode over one real forward + backward (padded count)."""
    from torch.utils.flop_counter import FlopCounterMode

    import flops

    reranker = _lora_reranker(family, targets, layers)
    ids = reranker.tokenize([f"query: sort a list document: {'use sorted in python ' * k}" for k in (1, 3, 6)])
    batch = reranker.collate(ids)
    with FlopCounterMode(display=False) as counter:
        reranker(**batch).sum().backward()
    measured = counter.get_total_flops()
    counted = flops.step_flops(reranker, [len(x) for x in ids])
    assert counted["padded"]["total"] == pytest.approx(measured, rel=0.02)
    # Real tokens only (no padding, causal half of attention) is strictly less work than what ran.
    assert counted["real"]["total"] < counted["padded"]["total"]
    assert counted["padded"]["tokens"] == 3 * max(len(x) for x in ids) > counted["real"]["tokens"]


def test_step_flops_parts_follow_the_frozen_backward_rule():
    """Head-only: no backward through the frozen model; all roles: backward ≈ forward, well under full fine-tuning."""
    import flops

    lengths = [40, 50]
    probe = flops.step_flops(_lora_reranker("llama", "none"), lengths)["real"]
    assert probe["dense_backward"] == probe["lora"] == 0
    lora = flops.step_flops(_lora_reranker("llama", "all"), lengths)
    real = lora["real"]
    # Only layer 0's q, k, v (fed by nothing trainable) skip their input gradient.
    assert 0.9 * real["dense_forward"] < real["dense_backward"] < real["dense_forward"]
    assert real["dense_forward"] == lora["six_n"] / 3  # 2N a token
    assert real["dense_forward"] + real["dense_backward"] < 2 / 3 * lora["six_n"]  # < 4N: no weight gradients


def test_write_result_refreshes_readme_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:x -->\nold\n<!-- /results:x -->\noutro\n")
    common.write_result("x", {"a": 1}, "| new |", tmp_path / "results", readme)
    assert readme.read_text() == "intro\n<!-- results:x -->\n| new |\n<!-- /results:x -->\noutro\n"
    assert json.loads((tmp_path / "results" / "x.json").read_text()) == {"a": 1}


def test_child_peak_rss_is_the_childs_own():
    code = "import sys; sys.path.insert(0, %r); import common; x = bytearray(300 * 2**20); x[::4096] = b'a' * len(x[::4096]); common.report_peak_rss()"  # noqa: E501
    small, _ = common.child_peak_rss([sys.executable, "-c", code.replace("300", "1") % str(BENCH)])
    large, _ = common.child_peak_rss([sys.executable, "-c", code % str(BENCH)])
    assert large - small > 250 * 2**20


# ---------------------------------------------------------------- slow: each benchmark end to end


def _load(results: Path, name: str) -> dict:
    record = json.loads((results / f"{name}.json").read_text())
    assert {"machine", "config", "ratios"} <= set(record)
    assert {"bf16", "fp32"} == set(record["machine"]["matmul_gflops"])
    assert (results / f"{name}.md").is_file()
    return record


@pytest.mark.slow
def test_machine_smoke(tmp_path):
    import machine

    machine.main(["--results", str(tmp_path)])
    _load_machine = json.loads((tmp_path / "machine.json").read_text())
    assert _load_machine["machine"]["cores"] >= 1


@pytest.mark.slow
def test_scoring_smoke(tiny_folder, tmp_path):
    bench_scoring.main(
        [
            "--model",
            str(tiny_folder),
            *TINY_ARGS,
            "--check-queries",
            "1",
            "--results",
            str(tmp_path),
            "--systems",
            "relevance-lens,rl: + merged + shared prefix,CrossEncoder fp32,Tevatron loop fp32",
        ]
    )
    record = _load(tmp_path, "scoring")
    names = {r["system"] for r in record["systems"]}
    assert names == {"relevance-lens", "rl: + merged + shared prefix", "CrossEncoder fp32", "Tevatron loop fp32"}
    assert all(r["check"]["ranking_flips"] == 0 for r in record["systems"])
    assert all(r["peak_rss_bytes"] > 0 for r in record["systems"])
    assert {c["system"] for c in record["checks"]} >= names
    assert {"vs_plain_loop_best", "vs_crossencoder_best", "fraction_of_bf16_matmul"} <= set(record["ratios"])
    # Each row is set against the rate sampled around its own kept round, not only the start's peak.
    for row in record["systems"]:
        assert row["rate_alongside_gflops"] > 0
        achieved = record["flops"]["total"] / row["seconds"] / 1e9
        assert row["fraction_of_rate_alongside"] == pytest.approx(achieved / row["rate_alongside_gflops"])
    ours = next(r for r in record["systems"] if r["system"] == "relevance-lens")
    assert record["ratios"]["fraction_of_bf16_rate_alongside"]["value"] == ours["fraction_of_rate_alongside"]


@pytest.mark.slow
def test_training_smoke(tiny_folder, tmp_path):
    import bench_training

    bench_training.main(
        [
            "--model",
            str(tiny_folder),
            "--no-eager",
            "--compile",  # a cold compile was 20 of its 40 s; compiled training: test_train.py
            "off",
            "--rounds",
            "1",
            "--steps",
            "2",
            "--queries",
            "2",
            "--group-size",
            "3",
            "--max-length",
            "400",
            "--no-memory",
            "--results",
            str(tmp_path),
        ]
    )
    record = _load(tmp_path, "training")
    assert record["config"]["compile"] == "off"
    assert [r["system"] for r in record["systems"]] == ["relevance-lens", "CrossEncoderTrainer"]
    assert set(record["ratios"]) == {"relevance-lens"}
    assert abs(record["check"]["relevance_lens"] - record["check"]["crossencoder"]) <= record["check"]["tolerance"]
    assert all(len(r["step_seconds"]) == 1 for r in record["systems"])
    # The step's work and its fraction of the measured matmul rate, for both systems on the same FLOPs.
    flops = record["flops"]["real"]
    assert flops["total"] > flops["dense_forward"] > 0 and flops["dense_backward"] > 0 and flops["lora"] > 0
    assert len({r["mean_step_flops"] for r in record["systems"]}) == 1
    for row in record["systems"]:
        achieved = row["mean_step_flops"] / row["mean_step_seconds"]
        assert row["fraction_of_matmul_rate"] == pytest.approx(
            achieved / 1e9 / record["machine"]["matmul_gflops"][record["config"]["precision"]]
        )
        assert row["fraction_of_rate_alongside"] == pytest.approx(achieved / 1e9 / row["rate_alongside_gflops"])
    assert record["fraction_of_matmul"]["value"] == record["systems"][0]["fraction_of_matmul_rate"]
    assert record["fraction_of_matmul"]["alongside"] == record["systems"][0]["fraction_of_rate_alongside"]
    assert "of rate alongside" in (tmp_path / "training.md").read_text()


@pytest.mark.slow
def test_sweep_smoke(tiny_folder, tmp_path):
    import bench_sweep

    bench_sweep.main(["--model", str(tiny_folder), *TINY_ARGS, "--rounds", "1", "--results", str(tmp_path)])
    record = _load(tmp_path, "sweep")
    modes = {r["mode"]: r for r in record["modes"]}
    assert list(modes) == ["naive", "cached", "cached + merged"]
    assert modes["cached"]["work_computed"] < modes["naive"]["work_computed"] == modes["cached"]["work_naive"]
    assert modes["cached + merged"]["work_computed"] == modes["cached"]["work_computed"]
    for check in record["check"].values():
        assert check["max_abs_diff"] <= check["tolerance"] and check["ranking_flips"] == 0
    assert all(r["peak_rss_bytes"] > 0 for r in record["modes"])


@pytest.mark.slow
def test_sweep_stops_before_timing_when_a_mode_disagrees(tiny_folder, tmp_path, monkeypatch):
    import bench_sweep
    from relevance_lens.dissect import switch as weightswap

    real_delta = weightswap._delta
    monkeypatch.setattr(weightswap, "_delta", lambda module: 5 * real_delta(module))  # a wrong merge
    timed = []
    monkeypatch.setattr(bench_sweep, "load_average", lambda: timed.append(1) or 0.0)  # called once per timed mode
    with pytest.raises(common.BenchmarkError, match="cached \\+ merged sweep differs from naive"):
        bench_sweep.main(
            ["--model", str(tiny_folder), *TINY_ARGS, "--rounds", "1", "--no-memory", "--results", str(tmp_path)]
        )
    assert not timed and not (tmp_path / "sweep.json").exists()


@pytest.mark.slow
def test_mechanisms_patch_smoke(tiny_folder, tmp_path):
    import bench_mechanisms

    record = bench_mechanisms.main(
        ["--model", str(tiny_folder), "--parts", "patch", "--max-length", "400", "--pairs", "2"]
        + ["--patch-queries", "6", "--depth", "5", "--results", str(tmp_path)]
    )
    patch = record["patch"]
    layers, pairs = patch["layers"], patch["pairs"]
    assert pairs >= 1 and set(patch["models"]) == {"fine-tuned", "base + head"}
    for model in patch["models"].values():
        assert model["sequence_forwards"] == pairs * (2 + 3 * 4 * layers)
        assert model["padded_tokens"] >= model["sequence_forwards"] * min(patch["sequence_tokens"])
    assert "heads" not in record and "patch" in (tmp_path / "mechanisms.md").read_text()


def test_mechanisms_attribute_times_the_analysis_own_adaptive_rule(tiny_folder, tmp_path):
    import bench_mechanisms

    record = bench_mechanisms.main(
        ["--model", str(tiny_folder), "--parts", "attribute", "--queries", "2", "--depth", "3", "--steps", "4"]
        + ["--results", str(tmp_path)]
    )["attribute"]
    assert (record["steps"], record["tolerance"], record["max_steps"]) == (4, 0.05, 1024)
    for model in ("fine-tuned", "base + head"):
        found = record[model]
        assert found["steps_used"] >= 4 and found["seconds"] > 0
        assert found["gap"] <= record["tolerance"] or found["steps_used"] >= record["max_steps"], found


def test_mechanisms_counts_forwards_at_the_reranker():
    import torch

    import bench_mechanisms

    reranker = tiny_reranker("llama").eval()
    batches = [reranker.collate([[5, 6, 7], [5, 6]]), reranker.collate([[8, 9]])]
    counter = bench_mechanisms.ForwardCounter(reranker)
    with torch.no_grad():
        for batch in batches:
            reranker(**batch)
        counter.close()
        reranker(**batches[1])  # not counted: the hook is gone
    assert counter.sequences == 3
    assert counter.tokens == sum(b["input_ids"].numel() for b in batches) >= 3 + 2 + 2


# ---------------------------------------------------------------- the demo's time


@pytest.mark.parametrize(
    "features, bar",
    [
        ("amx_bf16,avx512_bf16,avx512f,avx2", (12.0, "AMX")),
        ("avx512_bf16,avx512f,avx2", (20.0, "AVX-512 BF16 only")),
        ("avx512_bf16,avx512f,avx2,ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16", (20.0, "AVX-512 BF16 only")),
        ("avx2", None),
    ],
)
def test_demo_bar_follows_the_cpu(features, bar):
    import bench_demo

    assert bench_demo.bar_for(features) == bar


def test_demo_summary_refuses_untimed_cells_and_judges_the_bar():
    import bench_demo

    cells = [{"run": "r", "what": "train", "kind": "train", "seconds": 300.0}]
    summary = bench_demo.summarize(cells, 13 * 60, "amx_bf16,avx512_bf16")
    assert summary["within_bar"] is False and summary["outside_cells_seconds"] == 13 * 60 - 300
    assert bench_demo.summarize(cells, 13 * 60, "avx512_bf16")["within_bar"] is True
    with pytest.raises(common.BenchmarkError, match="without a timing.*lens · r"):
        bench_demo.summarize([*cells, {"run": "r", "what": "lens", "kind": "analyze", "seconds": None}], 60, "avx2")


@pytest.mark.slow
def test_demo_smoke_times_every_cell_of_a_study(tmp_path):
    import bench_demo
    from studyfix import study_files, study_toml

    make = study_files(tmp_path / "files", "t.toml", study_toml("t", max_steps=2, save_steps=(1,)))
    bench_demo.main(
        ["--study", str(make()), "--name", "t", "--results", str(tmp_path), "--work", str(tmp_path / "w")]
        + ["--rate-seconds", "0.2"]
    )
    record = json.loads((tmp_path / "t.json").read_text())
    cells = record["cells"]
    # The head-only run, the LoRA run and their checkpoint analyses, each timed by the study itself.
    assert sorted(c["what"] for c in cells) == ["checkpoints on tiny", "checkpoints on tiny", "train", "train"]
    assert all(c["seconds"] > 0 for c in cells)
    assert sum(c["seconds"] for c in cells) < record["wall_seconds"]
    summary = record["summary"]
    bar = summary["bar_minutes"]
    assert summary["within_bar"] == (None if bar is None else record["wall_seconds"] / 60 <= bar)
    assert record["command"].startswith("relevance-lens study run ") and record["peak_rss_bytes"] > 0
    assert "checkpoints on tiny" in (tmp_path / "t.md").read_text()
    with pytest.raises(common.BenchmarkError, match="exists"):  # never timed over a used work folder
        bench_demo.main(["--study", str(make()), "--results", str(tmp_path), "--work", str(tmp_path / "w")])
