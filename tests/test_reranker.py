"""The RankLLaMA scorer: scored position, padding, and the adapter + head round trip."""

import pytest
import torch

from relevance_lens.data.formats import Passage
from relevance_lens.errors import InputError
from relevance_lens.model.lora import LoraSettings, attach_lora
from relevance_lens.model.reranker import HEAD_FILE, Reranker, RerankerConfig, pool_last
from tiny import FAMILIES, save_tiny, tiny_reranker

QUERY = "what is the capital of france"
PASSAGES = [
    Passage("d1", "paris", "paris is the capital of france"),
    Passage("d2", "", "bananas are yellow fruit"),
    Passage("d3", "python", "how do i sort a list in python use sorted or list sort and more words here"),
]


def _randomize(reranker, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in reranker.named_parameters():
            if "lora_B" in name or name.startswith("score"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def test_pool_last_right_and_left_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool_last(hidden, right).squeeze(-1).tolist() == [1.0, 7.0]
    assert pool_last(hidden, left).squeeze(-1).tolist() == [3.0, 7.0]


@pytest.mark.parametrize("family", FAMILIES)
def test_left_right_and_single_scores_agree(family):
    reranker = tiny_reranker(family)
    right = reranker.score_pairs(QUERY, PASSAGES)
    singles = [reranker.score_pairs(QUERY, [p])[0] for p in PASSAGES]
    reranker.settings.padding_side = "left"
    left = reranker.score_pairs(QUERY, PASSAGES)
    assert right == pytest.approx(singles, abs=1e-5)
    assert right == pytest.approx(left, abs=1e-5)
    assert len(set(round(s, 6) for s in right)) == 3  # the passages really differ


def test_eos_is_appended_and_scored_even_when_pad_equals_eos():
    reranker = tiny_reranker("llama")
    reranker.tokenizer.pad_token = reranker.tokenizer.eos_token  # the LLaMA-3 / SmolLM2 situation
    reranker.pad_id = reranker.tokenizer.pad_token_id
    ids = reranker.tokenize([reranker.format(QUERY, p) for p in PASSAGES])
    assert all(seq[-1] == reranker.tokenizer.eos_token_id for seq in ids)
    assert ids[0][0] == reranker.tokenizer.bos_token_id
    batch = reranker.collate(ids)
    positions = (batch["attention_mask"] * torch.arange(batch["input_ids"].shape[1])).argmax(-1)
    picked = batch["input_ids"][torch.arange(3), positions]
    assert picked.tolist() == [reranker.tokenizer.eos_token_id] * 3
    assert positions.tolist() == [len(s) - 1 for s in ids]


def test_truncation_keeps_eos_and_max_length():
    reranker = tiny_reranker("llama", max_length=12)
    ids = reranker.tokenize([reranker.format(QUERY, PASSAGES[2])])[0]
    assert len(ids) == 12 and ids[-1] == reranker.tokenizer.eos_token_id


DOC_FIRST = "document: {title} {text} query: {query}"
LONG = Passage("d9", "python", " ".join(["use sorted or list sort to order a python list"] * 20))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_long_passage_is_cut_inside_the_passage_so_the_query_after_it_stays(family):
    reranker = tiny_reranker(family, max_length=80, template=DOC_FIRST)  # the tiny BPE: ~1 token a character
    tok = reranker.tokenizer
    ids = reranker.encode([(QUERY, LONG)])[0]
    assert len(ids) == 80 and ids[-1] == tok.eos_token_id
    whole = tok(reranker.format(QUERY, LONG), add_special_tokens=True)["input_ids"]
    tail = tok(" query: " + QUERY, add_special_tokens=False)["input_ids"]
    # The passage's last tokens went; the whole "query: ..." end of the text is still there, in order.
    assert ids[:-1][-len(tail) :] == whole[-len(tail) :] and len(whole) > 80
    kept = ids[: 80 - 1 - len(tail)]
    assert len(kept) > 20
    assert kept == whole[: len(kept)]  # BOS, "document:" and the passage's first tokens, as tokenized whole
    # The plain end cut loses the query: the failure this avoids.
    plain = reranker.tokenize([reranker.format(QUERY, LONG)])[0]
    assert plain[-1 - len(tail) : -1] != tail


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_passage_cut_changes_nothing_where_the_passage_is_last_or_the_text_fits(family):
    reranker = tiny_reranker(family, max_length=24)  # the default template: the passage last
    items = [(QUERY, p) for p in [*PASSAGES, LONG]]
    assert reranker.encode(items) == reranker.tokenize([reranker.format(q, p) for q, p in items])
    roomy = tiny_reranker(family, max_length=256, template=DOC_FIRST)
    fits = [(QUERY, p) for p in PASSAGES]
    assert roomy.encode(fits) == roomy.tokenize([roomy.format(q, p) for q, p in fits])


def test_query_longer_than_max_length_falls_back_to_the_end_cut():
    reranker = tiny_reranker("llama", max_length=16, template=DOC_FIRST)
    query = " ".join(["what is the capital of france"] * 10)
    ids = reranker.encode([(query, PASSAGES[0])])[0]
    assert ids == reranker.tokenize([reranker.format(query, PASSAGES[0])])[0] and len(ids) == 16


@pytest.mark.parametrize(
    "family,targets", [("llama", "all"), ("gpt_neox", "q"), ("gpt2", "mha"), ("gemma3", "mlp"), ("llama", "none")]
)
def test_adapter_and_head_round_trip(tmp_path, family, targets):
    folder = save_tiny(family, tmp_path / "base")
    reranker = Reranker.from_pretrained(str(folder))
    attach_lora(reranker, LoraSettings(rank=2, targets=targets, dropout=0.0))
    _randomize(reranker)
    reranker.eval()
    before = reranker.score_pairs(QUERY, PASSAGES)
    reranker.save(tmp_path / "adapter")

    fresh = Reranker.from_pretrained(str(folder))
    untrained = fresh.score_pairs(QUERY, PASSAGES)
    reloaded = Reranker.from_pretrained(str(folder), adapter=tmp_path / "adapter")
    after = reloaded.score_pairs(QUERY, PASSAGES)
    assert after == pytest.approx(before, abs=1e-6)
    assert untrained != pytest.approx(before, abs=1e-3)  # the head and adapter really were reloaded
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() == (targets != "none")


def test_adapter_folder_remembers_its_base_model(tmp_path):
    folder = save_tiny("llama", tmp_path / "base")
    reranker = Reranker.from_pretrained(str(folder), config=RerankerConfig(model=str(folder), max_length=64))
    reranker.save(tmp_path / "adapter")
    again = Reranker.from_pretrained(adapter=tmp_path / "adapter")
    assert again.settings.model == str(folder) and again.settings.max_length == 64


def test_missing_head_is_refused(tmp_path):
    folder = save_tiny("llama", tmp_path / "base")
    reranker = Reranker.from_pretrained(str(folder))
    attach_lora(reranker, LoraSettings(rank=2, targets="mha"))
    reranker.save(tmp_path / "adapter")
    (tmp_path / "adapter" / HEAD_FILE).unlink()
    with pytest.raises(InputError, match="score_head.safetensors is missing"):
        Reranker.from_pretrained(str(folder), adapter=tmp_path / "adapter")


def test_truncated_head_is_refused(tmp_path):
    folder = save_tiny("llama", tmp_path / "base")
    reranker = Reranker.from_pretrained(str(folder))
    reranker.save(tmp_path / "adapter")
    path = tmp_path / "adapter" / HEAD_FILE
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InputError, match="corrupted or truncated"):
        Reranker.from_pretrained(str(folder), adapter=tmp_path / "adapter")


def test_fused_q_only_changes_only_query_rows(tmp_path):
    from relevance_lens.model.roles import architecture_of, role_module, role_rows

    reranker = tiny_reranker("gpt_neox")
    attach_lora(reranker, LoraSettings(rank=2, targets="q", dropout=0.0))
    optim = torch.optim.AdamW([p for p in reranker.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        batch = reranker.collate(reranker.tokenize([reranker.format(QUERY, p) for p in PASSAGES]))
        reranker(**batch).sum().backward()
        optim.step()
        optim.zero_grad()
    arch = architecture_of(reranker.base_config)
    module = role_module(reranker.base_model, arch, 0, "q")
    b = module.lora_B["default"].weight
    q_rows = role_rows(reranker.base_config, arch, "q")
    other = torch.ones(b.shape[0], dtype=torch.bool)
    other[q_rows] = False
    assert b[q_rows].abs().sum() > 0
    assert b[other].abs().sum() == 0


def test_bad_template_is_refused():
    with pytest.raises(InputError, match="unknown field"):
        RerankerConfig(template="query: {question}")


@pytest.mark.parametrize(
    ("template", "passage_part"),
    [
        ("query: {query} document: {title} {text}", "paris paris is the capital"),
        ("  {title}: {text} | query: {query}!  ", "paris: paris is the capital"),
        ("q {query!r} p {text:>30} end", " " * 10 + "paris is the capital"),
        ("query: {query}", ""),
    ],
)
def test_format_spans_are_where_the_passage_is(template, passage_part):
    reranker = tiny_reranker("llama", template=template)
    passage = Passage("d", "paris", "paris is the capital")
    text, (start, end) = reranker.format_spans("capital of france", passage)
    assert text == template.format(query="capital of france", title="paris", text=passage.text).strip()
    assert text == reranker.format("capital of france", passage) and text[start:end] == passage_part
    ids, first, last = reranker.token_spans("capital of france", passage)
    assert ids == reranker.tokenize([text])[0]
    assert reranker.tokenizer.decode(ids[first:last]).strip() == passage_part.strip()


def _batch_and_spy(reranker, side):
    reranker.settings.padding_side = side
    batch = reranker.collate(reranker.encode([(QUERY, p) for p in PASSAGES]))
    seen = []
    handle = reranker.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True
    )
    return batch, seen, handle


@pytest.mark.parametrize("sliding_window", [None, 4], ids=["full", "window-4"])
@pytest.mark.parametrize("family", FAMILIES)
def test_causal_only_gives_the_masked_scores_and_gradients(family, sliding_window):
    """Right padding: dropping the padding mask changes neither scores nor LoRA/head gradients."""
    reranker = tiny_reranker(family)
    config = reranker.base_config
    if sliding_window and hasattr(config, "sliding_window"):
        config.sliding_window = sliding_window  # shorter than the rows: the window mask must still apply
    attach_lora(reranker, LoraSettings(rank=4, alpha=8, dropout=0.0))
    _randomize(reranker)
    batch, seen, handle = _batch_and_spy(reranker, "right")
    assert batch["attention_mask"][:, -1].tolist().count(0) == 2  # two of three rows really are padded
    runs = []
    for causal_only in (False, True):
        reranker.zero_grad()
        scores = reranker(**batch, causal_only=causal_only)
        (scores * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
        grads = {n: p.grad.clone() for n, p in reranker.named_parameters() if p.requires_grad and p.grad is not None}
        runs.append((scores.detach(), grads))
    handle.remove()
    assert seen[0] is not None and seen[1] is None  # the mask really was dropped
    assert torch.allclose(runs[0][0], runs[1][0], atol=1e-5)
    assert runs[0][1].keys() == runs[1][1].keys() and any("lora_A" in n for n in runs[0][1])
    for name, grad in runs[0][1].items():
        assert torch.allclose(grad, runs[1][1][name], atol=1e-5), name


def test_causal_only_keeps_the_mask_of_a_left_padded_batch():
    reranker = tiny_reranker("llama")
    _randomize(reranker)
    batch, seen, handle = _batch_and_spy(reranker, "left")
    scores = reranker(**batch, causal_only=True)
    handle.remove()
    assert seen[0] is not None  # left pads precede the real tokens: only the mask hides them
    reranker.settings.padding_side = "right"
    right = reranker(**reranker.collate(reranker.encode([(QUERY, p) for p in PASSAGES])))
    assert torch.allclose(scores, right, atol=1e-5)
