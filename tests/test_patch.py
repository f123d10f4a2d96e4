"""Activation patching: full transfers on every family, the query positions that cannot move a
query-first causal model, a patch checked against a hand-made hook, the pairs and their
alignment, the analysis rows (rerun skips), the CLI and the report."""

import json

import pytest
import torch
from typer.testing import CliRunner

from dissectfix import lora_reranker, one_thread, randomize_lora, tiny_evalset  # noqa: F401
from relevance_lens.data.formats import write_corpus, write_qrels, write_queries, write_run
from relevance_lens.dissect.patch import align_pair, chosen_pairs, patch_pair, patched_scores, run_and_cache
from relevance_lens.dissect.registry import Context, Inputs, run_analysis
from relevance_lens.dissect.settings import PatchSettings
from relevance_lens.errors import InputError
from relevance_lens.model.roles import architecture_of, blocks
from relevance_lens.store import Store
from studyfix import dry_run, no_weights_no_network  # noqa: F401  (a fixture)
from tiny import FAMILIES


def _aligned(reranker, index: int = 0):
    evalset = tiny_evalset(depth=3)
    return align_pair(reranker, evalset, chosen_pairs(evalset, 3)[index])


@pytest.mark.parametrize("family", FAMILIES)
def test_resid_at_all_positions_moves_the_whole_difference_and_query_positions_none(family):
    reranker = lora_reranker(family)
    aligned = _aligned(reranker)
    result = patch_pair(reranker, aligned, ["resid"], ["query", "passage", "last", "all"])
    assert abs(result.gap) > 1e-2  # something to move
    assert result.moved("resid", "all") == pytest.approx([1.0] * 4, abs=1e-4)  # any one layer
    assert result.moved("resid", "query") == pytest.approx([0.0] * 4, abs=1e-4)  # query-first, causal
    # After the last block only the scored position is read.
    assert result.moved("resid", "last")[-1] == pytest.approx(1.0, abs=1e-4)
    assert result.moved("resid", "passage")[-1] == pytest.approx(0.0, abs=1e-4)
    # Every layer at once, the residual stream at all positions: the source's score.
    _, cache = run_and_cache(reranker, aligned.source_ids, ["resid"])
    everything = [(set(range(4)), aligned.masks["all"])]
    (score,) = patched_scores(reranker, aligned.target_ids, cache["resid"], "resid", everything)
    assert score == pytest.approx(result.source_score, abs=1e-4 * abs(result.gap))


def test_a_last_position_patch_equals_a_hand_made_hook():
    reranker = lora_reranker("llama")
    aligned = _aligned(reranker, 1)
    block = blocks(reranker.base_model, architecture_of(reranker.base_config))[2]
    saved = {}

    def keep(module, args, output):
        saved["h"] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    def put(module, args, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        hidden[:, -1] = saved["h"][:, -1]
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    def score(ids):
        batch = reranker.collate([ids])
        with torch.inference_mode():
            return float(reranker(**batch)[0])

    handle = block.register_forward_hook(keep)
    try:
        source = score(aligned.source_ids)
    finally:
        handle.remove()
    handle = block.register_forward_hook(put)
    try:
        by_hand = score(aligned.target_ids)
    finally:
        handle.remove()
    result = patch_pair(reranker, aligned, ["resid"], ["last"])
    assert result.source_score == pytest.approx(source, abs=1e-6)
    assert result.patched["resid", "last"][2] == pytest.approx(by_hand, abs=1e-5)
    assert result.moved("resid", "last")[2] == pytest.approx((by_hand - result.target_score) / result.gap, abs=1e-4)


def test_sublayer_patches_follow_the_block_wiring():
    """At block 0 the scored token (EOS) embeds the same in both runs: in a sequential block the
    attention output then decides the block's output there (attn = resid); in GPT-NeoX's parallel
    block the MLP reads only that embedding, so its output there cannot differ (mlp = 0)."""
    llama = lora_reranker("llama")
    result = patch_pair(llama, _aligned(llama), ["resid", "attn"], ["last"])
    assert result.moved("attn", "last")[0] == pytest.approx(result.moved("resid", "last")[0], abs=1e-4)
    neox = lora_reranker("gpt_neox")
    result = patch_pair(neox, _aligned(neox), ["mlp"], ["last"])
    assert result.moved("mlp", "last")[0] == pytest.approx(0.0, abs=1e-4)


def test_pairs_are_aligned_by_cutting_the_longer_passage():
    evalset = tiny_evalset(depth=3)
    pairs = chosen_pairs(evalset, 2)
    assert [(p.qid, p.source, p.target) for p in pairs] == [("q0", "d0", "d1"), ("q1", "d1", "d0")]
    reranker = lora_reranker("llama")
    for pair in pairs:
        aligned = align_pair(reranker, evalset, pair)
        assert len(aligned.source_ids) == len(aligned.target_ids)
        full = {
            d: reranker.tokenize([reranker.format(evalset.queries[pair.qid], evalset.corpus[d])])[0]
            for d in (pair.source, pair.target)
        }
        shorter = min(full, key=lambda d: len(full[d]))
        assert (aligned.source_ids if shorter == pair.source else aligned.target_ids) == full[shorter]
        assert len(full[pair.source]) != len(full[pair.target])  # one was cut
        masks = aligned.masks
        assert torch.equal(masks["query"] | masks["passage"] | masks["last"], masks["all"])
        assert not (masks["query"] & masks["passage"]).any() and int(masks["last"].sum()) == 1
        assert aligned.source_ids[-1] == reranker.tokenizer.eos_token_id and bool(masks["last"][-1])
        query_end = int(masks["query"].sum())
        assert aligned.source_ids[:query_end] == aligned.target_ids[:query_end]
        assert aligned.source_ids[query_end:] != aligned.target_ids[query_end:]
        assert reranker.tokenizer.decode(aligned.source_ids[:query_end]).endswith("document: ")


def test_with_the_query_after_the_passage_its_positions_are_query_and_can_move_the_score():
    reranker = lora_reranker("llama")
    reranker.settings.template = "document: {title} {text} query: {query}"
    evalset = tiny_evalset(depth=3)
    aligned = align_pair(reranker, evalset, chosen_pairs(evalset, 3)[0])
    masks, ids = aligned.masks, aligned.source_ids
    query = evalset.queries[aligned.pair.qid]
    passage_at = masks["passage"].nonzero().flatten().tolist()
    after = [i for i in masks["query"].nonzero().flatten().tolist() if i > passage_at[-1]]
    assert passage_at == list(range(passage_at[0], passage_at[-1] + 1))  # one run of positions
    assert reranker.tokenizer.decode([ids[i] for i in after]).strip() == f"query: {query}"
    result = patch_pair(reranker, aligned, ["resid"], ["query", "all"])
    assert result.moved("resid", "all") == pytest.approx([1.0] * 4, abs=1e-4)
    # The query now reads the passage: its states differ between the runs, and patching them moves the score.
    assert max(abs(m) for m in result.moved("resid", "query")) > 1e-2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"components": ["heads"]}, "patch component 'heads': expected some of resid, attn, mlp"),
        ({"positions": ["title"]}, "patch position 'title': expected some of query, passage, last, all"),
        ({"positions": []}, r"patch position \(none\)"),
        ({"ablated": ["drop-q"]}, "patch ablated 'drop-q'"),
        ({"pairs": 0}, "patch pairs 0"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(InputError, match=message) as caught:
        PatchSettings(**kwargs)
    assert "\n" not in str(caught.value)


def test_no_pair_to_patch_is_refused():
    evalset = tiny_evalset(depth=1)  # q0's relevant passage is its only candidate
    evalset.run = {"q0": evalset.run["q0"]}
    evalset.__post_init__()
    with pytest.raises(InputError, match="no scored query has both a relevant and a non-relevant passage"):
        chosen_pairs(evalset, 4)


def test_patch_analysis_rows_rerun_and_report(tmp_path, monkeypatch):
    from relevance_lens.dissect import patch as patch_module
    from relevance_lens.report.patch_sections import patch_section
    from relevance_lens.report.results import Results, read_rows

    reranker = lora_reranker("llama")
    folder = tmp_path / "run" / "final"
    reranker.save(folder)
    monkeypatch.setattr(patch_module, "load_reranker", lambda *a, **k: reranker)
    store = Store(tmp_path / "r.sqlite")
    settings = PatchSettings(pairs=2, components=["resid", "mlp"], positions=["last", "all"], ablated=["drop-mlp"])
    inputs = Inputs(folder, tiny_evalset(depth=3), ["nDCG@10"])
    rows = run_analysis("patch", inputs, settings, Context(store=store))
    moved = {(r["variant"], r["layer"], r["role"]): r for r in rows if r["metric"] == "moved"}
    models = ("adapter", "head-base", "drop-mlp")
    assert {v for v, _, _ in moved} == {f"{m} {c}" for m in models for c in ("resid", "mlp")}
    assert len(moved) == 3 * 2 * 4 * 2  # models x components x layers x positions
    assert all(
        moved[f"{m} resid", layer, "all"]["value"] == pytest.approx(1.0, abs=1e-4) for m in models for layer in range(4)
    )
    assert moved["adapter mlp", 1, "last"]["n_queries"] == 2
    counts = {(r["variant"], r["metric"]): r["value"] for r in rows if r["layer"] is None}
    assert counts["adapter", "pairs"] == 2 and counts["adapter", "skipped pairs"] == 0
    assert {("adapter q0", "source score"), ("head-base q1", "target score")} <= set(counts)
    patched = [r for r in rows if r["metric"] == "patched score" and r["variant"] == "adapter resid q0"]
    assert len(patched) == 8
    config = json.loads(rows[0]["config_json"])
    assert config["pairs"] == [["q0", "d0", "d1"], ["q1", "d1", "d0"]] and "cut" in config["alignment"]
    assert store.has("run", "patch", checkpoint="final")
    monkeypatch.setattr(patch_module, "patch_pair", lambda *a, **k: pytest.fail("recomputed"))
    again = run_analysis("patch", inputs, settings, Context(store=store))
    assert len(again) == len(rows)  # read back, not recomputed

    section = patch_section(Results(read_rows(tmp_path / "r.sqlite")))
    assert section.body is not None and section.body.count("<img") == 2  # one heat map per component
    assert "residual stream" in section.body and "MLP output" in section.body
    assert len(section.tables) == 1 and len(section.tables[0].body) == 6  # runs x models x components
    assert "1.00 (L" in section.body  # resid at all positions peaks at 1
    from relevance_lens.report.page import write_report

    page = write_report(tmp_path / "r.sqlite", tmp_path / "report.html").read_text()
    body = page.split('<section id="patch">', 1)[1].split("</section>", 1)[0]
    assert 'class="note"' not in body and body.count("<img") == 2
    # What `report --figures` writes as files (relevance_lens.report.paper, tested on its own).
    assert [p.name for p in section.plots] == ["patch-resid-tiny-top-3-6-queries", "patch-mlp-tiny-top-3-6-queries"]
    assert section.tables[0].name == "patch-tiny-top-3-6-queries"


def test_a_model_whose_scores_tie_is_skipped_and_counted(tmp_path, monkeypatch):
    from relevance_lens.dissect import patch as patch_module

    reranker = lora_reranker("gpt2")
    folder = tmp_path / "run" / "final"
    reranker.save(folder)
    monkeypatch.setattr(patch_module, "load_reranker", lambda *a, **k: reranker)
    settings = PatchSettings(pairs=2, positions=["last"], min_gap=1e6)
    rows = run_analysis("patch", Inputs(folder, tiny_evalset(depth=3)), settings, Context())
    counts = {(r["variant"], r["metric"]): r["value"] for r in rows if r["layer"] is None}
    assert counts["adapter", "skipped pairs"] == 2 and counts["adapter", "pairs"] == 0
    assert not [r for r in rows if r["metric"] == "moved"]


def test_cli_analyze_patch_on_a_model_folder(tmp_path):
    from relevance_lens.cli import app
    from relevance_lens.model.lora import LoraSettings, attach_lora
    from relevance_lens.model.reranker import Reranker
    from tiny import save_tiny

    base = save_tiny("llama", tmp_path / "base")
    record = {"config": {"model": str(base), "rank": 2, "targets": "all"}}
    reranker = Reranker.from_pretrained(str(base))
    attach_lora(reranker, LoraSettings(rank=2, targets="all", dropout=0.0))
    randomize_lora(reranker)
    reranker.save(tmp_path / "r2-all" / "final", extra={"run": record})
    (tmp_path / "r2-all" / "run.json").write_text(json.dumps(record))
    evalset = tiny_evalset()
    files = {"queries": tmp_path / "q.tsv", "qrels": tmp_path / "qrels.txt", "corpus": tmp_path / "c.jsonl"}
    write_queries(evalset.queries, files["queries"])
    write_qrels(evalset.qrels, files["qrels"])
    write_corpus(evalset.corpus, files["corpus"])
    write_run(evalset.run, tmp_path / "bm25.run")
    args = [a for k, v in files.items() for a in (f"--{k}", str(v))] + ["--run", str(tmp_path / "bm25.run")]
    db = tmp_path / "results.sqlite"
    result = CliRunner().invoke(
        app,
        ["analyze", "patch", str(tmp_path / "r2-all" / "final"), *args, "--depth", "3", "--pairs", "1",
         "--position", "last", "--position", "all", "--store", str(db)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "patch adapter resid" in result.output and "patch head-base resid" in result.output
    assert Store(db).has("r2-all", "patch", checkpoint="final")


@pytest.mark.usefixtures("no_weights_no_network")
def test_the_mechanisms_study_plans_patching_with_its_cost(tmp_path):
    listed = dry_run("mechanisms", tmp_path / "w")
    (cell,) = [c for c, _ in listed if c.what == "patch on dev10"]
    # 2 models x (2 + 3 components x 4 positions x 30 layers) per pair, 4 pairs.
    assert cell.cost == "724 sequence forwards x 4 pairs (at most)" and cell.work == 724 * 4
