"""Export: an adapter becomes a transformers sequence-classification folder that transformers,
sentence-transformers' CrossEncoder and rerankers load and score exactly as relevance-lens does."""

import json
import subprocess
import sys

import pytest
import torch

from relevance_lens.data.formats import Passage, read_corpus, read_queries, read_run
from relevance_lens.errors import InputError
from relevance_lens.export import (
    PROBES,
    ExportConfig,
    PairTemplate,
    export_adapter,
    export_tokenizer,
    passage_text,
    tokenization_problem,
)
from relevance_lens.model.lora import LoraSettings, attach_lora
from relevance_lens.model.manifest import write_manifest
from relevance_lens.model.reranker import Reranker, RerankerConfig
from tiny import FAMILIES, save_tiny, tiny_reranker
from trainfix import write_collection

TEMPLATE = "query: {query} document: {title} {text}"


def trained_adapter(root, family="llama", targets="all", **settings):
    """A tiny adapter whose LoRA B and head are random (as if trained), so merging really changes scores."""
    base = save_tiny(family, root / "base")
    reranker = Reranker.from_pretrained(str(base), config=RerankerConfig(model=str(base), max_length=256, **settings))
    attach_lora(reranker, LoraSettings(rank=2, targets=targets, dropout=0.0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in reranker.named_parameters():
            if "lora_B" in name or name.startswith("score"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    reranker.save(root / "adapter")
    return root / "adapter"


def hf_scores(folder, pairs):
    """Scores from plain transformers, batched with padding: what any pipeline on the folder does."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer([q for q, _ in pairs], [p for _, p in pairs], padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits[:, 0].tolist()


@pytest.mark.parametrize(
    "template,parts",
    [
        (TEMPLATE, ("query: ", " document: ", "{title} {text}", "")),
        ("  Q: {query}\nP: {text} ", ("Q: ", "\nP: ", "{text}", "")),
        ("{query} [SEP] {title}.", ("", " [SEP] ", "{title}", ".")),
        ("document: {title} {text} query: {query}", ("document: ", " query: ", "{title} {text}", "", False)),
        ("{text} {query}", ("", " ", "{text}", "", False)),
    ],
)
def test_templates_split_into_a_pair(template, parts):
    assert PairTemplate.parse(template) == PairTemplate(*parts)


@pytest.mark.parametrize(
    "template",
    ["{text} {query} {title}", "document: {title} {text}", "{query} {title} x {text}", "{query}{query}{text}"],
)
def test_templates_a_pair_cannot_carry_are_refused(template):
    with pytest.raises(InputError, match="export needs"):
        PairTemplate.parse(template)


def test_passage_string_fills_the_passage_slot():
    assert passage_text(Passage("d", "Title", "body"), TEMPLATE) == "Title body"
    assert passage_text(Passage("d", "", "body"), TEMPLATE) == " body"  # as rerank scores an untitled corpus


@pytest.mark.parametrize("max_length", [256, 48])
@pytest.mark.parametrize("template", [TEMPLATE, "document: {title} {text} query: {query}"])
def test_pair_tokenizer_gives_our_token_ids(max_length, template):
    reranker = tiny_reranker("llama", max_length=max_length, template=template)
    tokenizer = export_tokenizer(reranker)
    assert tokenization_problem(reranker, tokenizer) is None
    query, passage = "sort", Passage("d", "Python", "use sorted or list sort " * 20)  # truncated at both lengths
    ours = reranker.encode([(query, passage)])[0]
    theirs = tokenizer(query, passage_text(passage, template), truncation=True)["input_ids"]
    assert theirs == ours and len(ours) == max_length and theirs[-1] == tokenizer.eos_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.padding_side == "right"


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_scores_the_export_as_relevance_lens_does(tmp_path, family):
    adapter = trained_adapter(tmp_path, family)
    if family == "qwen2":
        # transformers loads qwen2 folders with Qwen2Tokenizer, which rebuilds its normalizer and drops the
        # space our pair template restores: the export check refuses the folder rather than write a wrong one.
        with pytest.raises(InputError, match="does not keep the pair template"):
            export_adapter(adapter, tmp_path / "export")
        assert not (tmp_path / "export").exists()
        return
    out = export_adapter(adapter, tmp_path / "export")
    ours = Reranker.from_pretrained(adapter=adapter).eval()
    query, passages = PROBES[0][0], [p for _, p in PROBES]
    # One pair at a time: the tiny qwen2 folder's tokenizer pads with an id past the embeddings (a fixture quirk).
    want = [ours.score_pairs(query, [p])[0] for p in passages]
    got = hf_scores(out, [(query, passage_text(p, TEMPLATE)) for p in passages])
    # LoRA merged into W rounds differently from W·x + B·A·x: fp32 rounding, amplified by the large random B.
    assert got == pytest.approx(want, rel=1e-3, abs=1e-3)
    base_only = Reranker.from_pretrained(str(tmp_path / "base")).eval()
    base_only.score.load_state_dict(ours.score.state_dict())
    unmerged = [base_only.score_pairs(query, [p])[0] for p in passages]
    assert unmerged != pytest.approx(want, abs=1e-3)  # LoRA was merged, not dropped
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"][0].endswith("ForSequenceClassification") and len(config["id2label"]) == 1


def test_bf16_export_is_the_fp32_export_rounded(tmp_path):
    from safetensors.torch import load_file

    adapter = trained_adapter(tmp_path)
    full = load_file(export_adapter(adapter, tmp_path / "fp32") / "model.safetensors")
    bf16 = export_adapter(adapter, tmp_path / "bf16", config=ExportConfig(dtype="bf16"))
    half = load_file(bf16 / "model.safetensors")
    assert full.keys() == half.keys() and all(half[k].dtype == torch.bfloat16 for k in half)
    assert all(torch.equal(half[k], full[k].to(torch.bfloat16)) for k in full)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny exported adapter and `relevance-lens rerank`'s run with it on a tiny collection."""
    root = tmp_path_factory.mktemp("exported")
    adapter = trained_adapter(root)
    files = write_collection(root)
    r = cli("export", adapter, "--output", root / "export")
    assert r.returncode == 0, r.stderr
    r = cli(
        "rerank", "--adapter", adapter, "--queries", files["queries"], "--corpus", files["corpus"],
        "--run", files["negatives_run"], "--output", root / "rr.run", "--depth", 8, "--dtype", "fp32", "--drop-tail",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    queries, corpus = read_queries(files["queries"]), read_corpus(files["corpus"])
    first = read_run(files["negatives_run"])
    candidates = {q: sorted(docs, key=lambda d: (-docs[d], d))[:8] for q, docs in first.items()}
    return root / "export", queries, corpus, candidates, read_run(root / "rr.run")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "relevance_lens", *map(str, args)], capture_output=True, text=True)


def ranking(scores: dict) -> list[str]:
    return sorted(scores, key=lambda d: (-scores[d], d))


def test_crossencoder_reproduces_rerank(exported):
    from sentence_transformers import CrossEncoder

    folder, queries, corpus, candidates, reranked = exported
    model = CrossEncoder(str(folder), device="cpu")
    for qid, docids in candidates.items():
        scores = model.predict([(queries[qid], passage_text(corpus[d], TEMPLATE)) for d in docids])
        got = dict(zip(docids, map(float, scores)))
        assert ranking(got) == ranking(reranked[qid])
        assert [got[d] for d in docids] == pytest.approx([reranked[qid][d] for d in docids], rel=1e-4, abs=1e-4)


def test_rerankers_reproduces_rerank(exported):
    rerankers = pytest.importorskip("rerankers")
    folder, queries, corpus, candidates, reranked = exported
    model = rerankers.Reranker(str(folder), model_type="cross-encoder", device="cpu", dtype=torch.float32, verbose=0)
    for qid, docids in candidates.items():
        result = model.rank(queries[qid], [passage_text(corpus[d], TEMPLATE) for d in docids], doc_ids=docids)
        got = {r.document.doc_id: r.score for r in result.results}
        assert [r.document.doc_id for r in result.results] == ranking(reranked[qid])
        assert [got[d] for d in docids] == pytest.approx([reranked[qid][d] for d in docids], rel=1e-4, abs=1e-4)


def test_model_card_holds_base_template_training_eval_and_licences(tmp_path):
    run = tmp_path / "run"
    adapter = trained_adapter(tmp_path)
    record = json.loads((adapter / "reranker.json").read_text())
    record["run"] = {"config": {"data": "faq+weak", "lr": 0.002, "rank": 2}, "resolved": {"precision": "fp32"}}
    record["step"] = 50
    (adapter / "reranker.json").write_text(json.dumps(record))
    write_manifest(adapter)  # we edited a file the manifest vouches for
    run.mkdir()
    adapter.rename(run / "final")
    evaluation = {"split": "dev", "depth": 20, "n_queries": 86, "bm25": {"nDCG@10": 0.5995}}
    (run / "eval.dev.json").write_text(json.dumps({**evaluation, "reranker": {"nDCG@10": 0.6488}}))
    card = (export_adapter(run / "final", tmp_path / "export") / "README.md").read_text()
    for expected in (
        str(tmp_path / "base"),  # the base model
        "query: {query} document: {title} {text}",
        "EOS token appended",
        "(step 50)",
        '"lr": 0.002',
        '"resolved.precision": "fp32"',
        "| reranker | 0.6488 |",
        "LICENSES.md",
        "Apache-2.0",
        "`score` layer",
    ):
        assert expected in card


def test_export_refuses_a_non_empty_folder_and_a_head_with_bias(tmp_path):
    adapter = trained_adapter(tmp_path / "plain")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="--overwrite"):
        export_adapter(adapter, busy)
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    export_adapter(adapter, busy, config=ExportConfig(overwrite=True))
    assert not (busy / "keep.txt").exists() and (busy / "model.safetensors").is_file()

    biased = trained_adapter(tmp_path / "bias", head_bias=True)
    with pytest.raises(InputError, match="bias"):
        export_adapter(biased, tmp_path / "never")
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".never*"))


def test_cli_export_error_is_one_line(tmp_path):
    r = cli("export", tmp_path / "missing", "--output", tmp_path / "out")
    assert r.returncode == 2 and "no such folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_libraries_reproduce_rerank_on_the_embedded_model(tmp_path):
    """SmolLM2-135M with a random-B LoRA and head, on FAQ dev pairs: all three libraries rank as rerank does."""
    from sentence_transformers import CrossEncoder

    rerankers = pytest.importorskip("rerankers")
    from relevance_lens.data.faq import load_faq
    from relevance_lens.score.config import ScoreConfig, prepare
    from relevance_lens.score.rerank import rerank

    reranker = Reranker.from_pretrained("smollm2-135m", config=RerankerConfig(max_length=96))
    attach_lora(reranker, LoraSettings(rank=2, targets="all", dropout=0.0))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in reranker.named_parameters():
            if "lora_B" in name or name.startswith("score"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    reranker.save(tmp_path / "adapter")
    out = export_adapter(tmp_path / "adapter", tmp_path / "export")
    data = load_faq("dev")
    qids = sorted(data.queries)[:4]
    first = {q: dict(sorted(data.run[q].items(), key=lambda kv: -kv[1])[:10]) for q in qids}
    config = ScoreConfig(depth=10, dtype="fp32")
    ours = rerank(prepare(Reranker.from_pretrained(adapter=tmp_path / "adapter"), config), data.queries,
                  data.corpus, first, config, progress=False)  # fmt: skip
    cross = CrossEncoder(str(out), device="cpu")
    ranker = rerankers.Reranker(str(out), model_type="cross-encoder", device="cpu", dtype=torch.float32, verbose=0)
    for qid in qids:
        docids = list(first[qid])
        pairs = [(data.queries[qid], passage_text(data.corpus[d], reranker.settings.template)) for d in docids]
        want = [ours[qid][d] for d in docids]
        for scores in (
            list(map(float, cross.predict(pairs))),
            [r.score for r in sorted(ranker.rank(pairs[0][0], [p for _, p in pairs], doc_ids=docids).results,
                                     key=lambda r: docids.index(r.document.doc_id))],
            hf_scores(out, pairs),
        ):  # fmt: skip
            assert scores == pytest.approx(want, rel=1e-3, abs=1e-3)
            assert ranking(dict(zip(docids, scores))) == ranking(ours[qid])


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "smollm2-135m",
        # Found at merge: on some FAQ dev pair Gemma-3's pair template gives other ids than ours past the
        # shared prefix, and the export's own check refuses the model (InputError, as for qwen2): open.
        pytest.param("gemma3-270m", marks=pytest.mark.xfail(raises=InputError, strict=True)),
    ],
)
def test_embedded_tokenizers_give_our_token_ids_on_faq_pairs(name):
    """The real tokenizers (byte-level BPE, SentencePiece-style BPE) on every FAQ dev query's BM25 top 10."""
    from transformers import AutoTokenizer

    from relevance_lens.data.faq import load_faq
    from relevance_lens.export import cut_like_ours
    from relevance_lens.model.backbone import resolve_model
    from tiny import tiny_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name).path)
    reranker = Reranker(tiny_model("llama"), tokenizer, RerankerConfig(model=name, max_length=96))  # only tokenizes
    exported = export_tokenizer(reranker)
    data = load_faq("dev")
    pairs = [(data.queries[q], data.corpus[d]) for q in sorted(data.queries) for d in list(data.run[q])[:10]]
    checked = [(q, p) for q, p in pairs if cut_like_ours(exported, q, passage_text(p, TEMPLATE))]
    assert len(checked) == len(pairs)  # FAQ questions are short: no pair is cut differently
    assert tokenization_problem(reranker, exported, checked) is None
