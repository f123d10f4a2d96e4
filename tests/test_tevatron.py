"""Tevatron's formats: both training schemas, duplicates, and its LoRA reranker adapters (issue #12, item 8).

The adapter is built as Tevatron's ``RerankerModel.build`` builds one (PEFT ``LoraConfig(task_type=SEQ_CLS)``
on ``AutoModelForSequenceClassification``, so the ``score`` head is saved among the adapter's modules)
on a tiny random llama, and scored the way ``tevatron.reranker.driver.rerank`` scores: the model
loaded as ``AutoModelForSequenceClassification``, the adapter through ``PeftModel.from_pretrained``
and merged, ``format_pair``'s input with RankLLaMA's prefixes, its collator's tokenization and padding.
Those steps are written out below from Tevatron's source (``src/tevatron/reranker/{modeling,dataset,
collator}.py``, ``driver/rerank.py``), not imported: Tevatron is not a dependency.
"""

import json
import subprocess
import sys

import pytest
import torch

from relevance_lens.data.formats import Passage, read_corpus, read_run, read_tevatron, write_corpus, write_queries
from relevance_lens.errors import InputError
from relevance_lens.model.reranker import AdapterWarning, Reranker, is_tevatron_adapter
from relevance_lens.train.config import TrainConfig
from relevance_lens.train.groups import load_groups
from tiny import save_tiny

# ---------------------------------------------------------------- training data: both schemas

CORPUS = {
    "d1": Passage("d1", "paris", "paris is the capital of france"),
    "d2": Passage("d2", "", "bananas are yellow fruit"),
    "d3": Passage("d3", "python", "use sorted or list sort in python"),
    "d4": Passage("d4", "", "apt installs debian packages"),
}
OLD = [
    {"query_id": "q1", "query": "capital of france", "positive_passages": ["d1"], "negative_passages": ["d2", "d3"]},
    {"query_id": "q2", "query": "sort a list", "positive_passages": ["d3"], "negative_passages": ["d4", "d1"]},
]


def _old_line(record: dict) -> dict:
    def passages(ids):
        return [{"docid": d, "title": CORPUS[d].title, "text": CORPUS[d].text} for d in ids]

    return {
        **record,
        "positive_passages": passages(record["positive_passages"]),
        "negative_passages": passages(record["negative_passages"]),
    }


def _v2_line(record: dict) -> dict:
    """Tevatron v2's id schema, as ``tevatron.retriever.dataset.TrainDataset`` reads it."""
    return {
        "query_id": record["query_id"],
        "query_text": record["query"],
        "query_image": None,
        "positive_document_ids": record["positive_passages"],
        "negative_document_ids": record["negative_passages"],
    }


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def schemas(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(CORPUS, corpus)
    return {
        "old": _write_jsonl(tmp_path / "old.jsonl", [_old_line(r) for r in OLD]),
        "v2": _write_jsonl(tmp_path / "v2.jsonl", [_v2_line(r) for r in OLD]),
        "corpus": corpus,
    }


def test_both_schemas_read_to_the_same_groups(schemas):
    old = read_tevatron(schemas["old"])
    v2 = read_tevatron(schemas["v2"], read_corpus(schemas["corpus"]))
    assert old == v2
    assert [g.query_id for g in v2] == ["q1", "q2"] and v2[0].negatives == [CORPUS["d2"], CORPUS["d3"]]


def test_both_schemas_give_the_same_training_groups(schemas, tmp_path):
    """What train sees: equal groups from either schema (v2 with its --corpus)."""
    common = dict(data="files", output=str(tmp_path / "run"), group_size=2)
    old = load_groups(TrainConfig(tevatron=str(schemas["old"]), **common))
    v2 = load_groups(TrainConfig(tevatron=str(schemas["v2"]), corpus=str(schemas["corpus"]), **common))
    for part in ("queries", "positives", "negatives"):
        assert getattr(old, part) == getattr(v2, part)
    assert old.corpus == {d: CORPUS[d] for d in CORPUS} == v2.corpus
    assert "corpus" in v2.fingerprints


def _trained(run_dir):
    """A finished run's per-step losses and its final LoRA and head weights."""
    from safetensors.torch import load_file

    log = json.loads((run_dir / "train_summary.json").read_text())["log"]
    weights = {
        f"{name}:{key}": value
        for name in ("adapter_model.safetensors", "score_head.safetensors")
        for key, value in load_file(run_dir / "final" / name).items()
    }
    return [entry["loss"] for entry in log if "loss" in entry], weights


def test_both_schemas_train_the_same_model(schemas, tmp_path, monkeypatch):
    """``train`` on either schema (v2 with its --corpus): a final adapter and head, the same groups, and with one
    seed the same losses and weights, bit for bit (one thread: the same float sums in the same order)."""
    from relevance_lens.train.trainer import train
    from trainfix import tiny_train_settings

    monkeypatch.setenv("RELEVANCE_LENS_THREADS", "1")
    model = str(save_tiny("llama", tmp_path / "model"))
    # 2 queries of 1 positive and 2 negatives: groups of 3, both queries in each step.
    settings = dict(group_size=3, max_steps=2, save_steps=[1], logging_steps=1, lr=1e-2)
    given = {
        "old": {"tevatron": str(schemas["old"])},
        "v2": {"tevatron": str(schemas["v2"]), "corpus": str(schemas["corpus"])},
    }
    runs = {
        schema: train(
            TrainConfig(**tiny_train_settings({"model": model, **files}, tmp_path / schema, **settings)), progress=False
        )
        for schema, files in given.items()
    }
    records = {schema: json.loads((run / "run.json").read_text()) for schema, run in runs.items()}
    assert records["v2"]["config"]["corpus"] == str(schemas["corpus"]) and records["old"]["config"]["corpus"] is None
    assert records["old"]["resolved"]["train_queries"] == records["v2"]["resolved"]["train_queries"] == len(OLD)
    (old_losses, old_weights), (v2_losses, v2_weights) = _trained(runs["old"]), _trained(runs["v2"])
    assert len(old_losses) == 2 and old_losses == v2_losses
    assert any(k.startswith("adapter_model") for k in old_weights) and any(
        k.startswith("score_head") for k in old_weights
    )
    assert old_weights.keys() == v2_weights.keys()
    for key, value in old_weights.items():
        assert torch.equal(value, v2_weights[key]), key
    assert any(float(v.abs().max()) > 0 for k, v in old_weights.items() if "lora_B" in k)  # training moved B off zero


def _refused(path, *needles, corpus=None):
    with pytest.raises(InputError) as exc:
        read_tevatron(path, corpus)
    text = str(exc.value)
    assert "\n" not in text and str(path) in text, text
    for needle in needles:
        assert needle in text, (needle, text)


def test_a_v2_file_without_its_corpus_is_refused(schemas):
    _refused(schemas["v2"], ":1:", "positive_document_ids", "--corpus")


def test_a_v2_id_missing_from_the_corpus_is_refused(schemas, tmp_path):
    path = _write_jsonl(tmp_path / "t.jsonl", [_v2_line(OLD[0]), {**_v2_line(OLD[1]), "negative_document_ids": ["zz"]}])
    _refused(path, ":2:", "'zz'", "not in the corpus", corpus=CORPUS)


def test_a_media_query_is_refused(schemas, tmp_path):
    path = _write_jsonl(tmp_path / "t.jsonl", [{**_v2_line(OLD[0]), "query_image": "cat.png"}])
    _refused(path, ":1:", "query_image", corpus=CORPUS)


@pytest.mark.parametrize("schema", ["old", "v2"])
def test_a_duplicate_query_id_is_refused_naming_both_lines(tmp_path, schema):
    """Tevatron trains on each line; keyed by query id, the second line would silently replace the first."""
    line = _old_line if schema == "old" else _v2_line
    records = [line(OLD[0]), line(OLD[1]), line({**OLD[1], "query_id": "q1", "query": "another"})]
    path = _write_jsonl(tmp_path / "t.jsonl", records)
    _refused(path, ":3:", "duplicate query id 'q1'", "also on line 1", corpus=CORPUS)


def test_one_docid_with_two_texts_is_refused_naming_both_lines(tmp_path):
    second = _old_line(OLD[1])
    second["negative_passages"][1]["text"] = "paris is not the capital of spain"  # d1, changed
    path = _write_jsonl(tmp_path / "t.jsonl", [_old_line(OLD[0]), second])
    _refused(path, ":2:", "passage 'd1'", "line 1")


# ---------------------------------------------------------------- Tevatron's adapters

QUERY_PREFIX, PASSAGE_PREFIX, MAX_LEN = "query: ", "document: ", 196
QUERIES = {"q1": "what is the capital of france", "q2": "how do i sort a list in python"}
PASSAGES = {
    "d1": Passage("d1", "paris-france", "paris is the capital of france"),
    "d2": Passage("d2", "", "bananas are yellow fruit"),
    "d3": Passage("d3", " python ", "use sorted or list sort " + "zq xv jk wy " * 60),  # truncated at 196 tokens
    "d4": Passage("d4", "debian", "apt installs packages"),
}


def format_pair(query: str, passage: str, title: str, query_prefix: str, passage_prefix: str) -> str:
    """tevatron.reranker.dataset.format_pair."""
    title = title.replace("-", " ").strip()
    return f"{query_prefix} {query} {passage_prefix} {title} {passage}".strip()


@pytest.fixture(scope="module")
def tevatron_adapter(tmp_path_factory):
    """A Tevatron-format LoRA reranker on a tiny llama: built as RerankerModel.build, 'trained' by randomizing."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("tevatron")
    base = save_tiny("llama", root / "base")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = 0
    config = LoraConfig(
        base_model_name_or_path=str(base),
        task_type=TaskType.SEQ_CLS,
        r=4,
        lora_alpha=8,
        lora_dropout=0.1,
        target_modules=["q_proj", "v_proj", "down_proj"],
        inference_mode=False,
    )
    model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # LoRA A, B and the score head: what training moves
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    adapter = root / "adapter"
    model.save_pretrained(adapter)
    return {"base": base, "adapter": adapter, "root": root}


def tevatron_rerank(base, adapter, pairs: list[tuple[str, Passage]]) -> tuple[list[list[int]], list[float]]:
    """tevatron.reranker.driver.rerank's loading and scoring (RerankerModel.load, its inference collator)."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = 0
    tokenizer.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = 0
    lora_config = LoraConfig.from_pretrained(adapter)
    model = PeftModel.from_pretrained(model, adapter, config=lora_config).merge_and_unload().eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    texts = [format_pair(q, p.text, p.title, QUERY_PREFIX, PASSAGE_PREFIX) for q, p in pairs]
    encoded = tokenizer(
        texts,
        padding=False,
        truncation=True,
        max_length=MAX_LEN,  # append_eos_token off: RankLLaMA's recipe
        return_attention_mask=False,
        return_token_type_ids=False,
        add_special_tokens=True,
    )
    batch = tokenizer.pad(encoded, padding=True, pad_to_multiple_of=16, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        scores = model(**batch).logits.float().view(-1).tolist()
    return encoded["input_ids"], scores


def _pairs():
    return [(QUERIES[q], PASSAGES[d]) for q in sorted(QUERIES) for d in sorted(PASSAGES)]


def test_the_adapter_has_tevatrons_layout(tevatron_adapter):
    """What makes the folder Tevatron's (and what would break the reading if PEFT changed it)."""
    from safetensors import safe_open

    config = json.loads((tevatron_adapter["adapter"] / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in (config.get("modules_to_save") or [])
    with safe_open(tevatron_adapter["adapter"] / "adapter_model.safetensors", "pt") as fh:
        keys = set(fh.keys())
    assert "base_model.model.score.weight" in keys
    assert any(k.startswith("base_model.model.model.layers.0.self_attn.q_proj.lora_A") for k in keys)
    assert is_tevatron_adapter(tevatron_adapter["adapter"])


def test_it_scores_exactly_as_tevatrons_recipe(tevatron_adapter):
    """Same token ids, same scores (fp32; float rounding only: Tevatron merges the LoRA, we keep it apart)."""
    pairs = _pairs()
    their_ids, theirs = tevatron_rerank(tevatron_adapter["base"], tevatron_adapter["adapter"], pairs)
    with pytest.warns(AdapterWarning, match="Tevatron") as caught:
        reranker = Reranker.from_pretrained(adapter=tevatron_adapter["adapter"])
    message = next(str(w.message) for w in caught if issubclass(w.category, AdapterWarning))
    assert "\n" not in message and "no EOS" in message and "query:  {query} document:  {title} {text}" in message
    ours_ids = reranker.tokenize([reranker.format(q, p) for q, p in pairs])
    assert ours_ids == their_ids and max(map(len, ours_ids)) == MAX_LEN  # d3 is truncated like theirs
    ours = [
        s for q in sorted(QUERIES) for s in reranker.score_pairs(QUERIES[q], [PASSAGES[d] for d in sorted(PASSAGES)])
    ]
    assert ours == pytest.approx(theirs, abs=1e-5, rel=1e-5)
    assert len({round(s, 4) for s in theirs}) == len(theirs)  # the scores really differ


def test_rerank_cli_reads_the_adapter_and_ranks_as_tevatron(tevatron_adapter, tmp_path):
    pairs = _pairs()
    _, theirs = tevatron_rerank(tevatron_adapter["base"], tevatron_adapter["adapter"], pairs)
    write_queries(QUERIES, tmp_path / "q.tsv")
    write_corpus(PASSAGES, tmp_path / "c.jsonl")
    (tmp_path / "first.run").write_text(
        "".join(f"{q} Q0 {d} {i + 1} {10 - i} bm25\n" for q in sorted(QUERIES) for i, d in enumerate(sorted(PASSAGES)))
    )
    args = ["--queries", tmp_path / "q.tsv", "--corpus", tmp_path / "c.jsonl", "--run", tmp_path / "first.run"]
    r = subprocess.run(
        [sys.executable, "-m", "relevance_lens", "rerank", "--adapter", tevatron_adapter["adapter"], *args]
        + ["--output", tmp_path / "out.run", "--dtype", "fp32", "--depth", "4"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "Tevatron-format adapter" in r.stderr
    run = read_run(tmp_path / "out.run")
    expected = {
        q: {d: theirs[i * len(PASSAGES) + j] for j, d in enumerate(sorted(PASSAGES))}
        for i, q in enumerate(sorted(QUERIES))
    }
    for q in QUERIES:
        assert sorted(run[q], key=run[q].get) == sorted(expected[q], key=expected[q].get)
        assert [run[q][d] for d in sorted(PASSAGES)] == pytest.approx(
            [expected[q][d] for d in sorted(PASSAGES)], abs=1e-4
        )


def test_its_update_is_read_for_weight_analysis(tevatron_adapter):
    """analyze weights: ΔW per (layer, role) read from the SEQ_CLS layout equals what PEFT merges in."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from relevance_lens.dissect.weights import load_adapter_weights

    weights = load_adapter_weights(tevatron_adapter["adapter"])
    assert {role for _, role in weights.parts()} == {"q", "v", "down"} and len(weights.parts()) == 3 * 4
    base = AutoModelForSequenceClassification.from_pretrained(tevatron_adapter["base"], num_labels=1)
    before = base.model.layers[2].mlp.down_proj.weight.detach().clone()
    merged = PeftModel.from_pretrained(base, tevatron_adapter["adapter"]).merge_and_unload()
    b, a, scaling = weights.part(2, "down")
    delta = merged.model.layers[2].mlp.down_proj.weight.detach().double() - before.double()
    assert torch.allclose(scaling * b @ a, delta, atol=1e-6)


def test_another_named_base_of_another_config_is_refused(tevatron_adapter):
    other = save_tiny("mistral", tevatron_adapter["root"] / "mistral")
    with pytest.raises(InputError) as exc:
        Reranker.from_pretrained(str(other), tevatron_adapter["adapter"])
    assert "\n" not in str(exc.value) and "config differs" in str(exc.value) and "--allow-other-base" in str(exc.value)
