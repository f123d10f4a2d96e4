"""The score-head lens and the per-layer probes, on cases whose answer is known."""

import pytest
import torch

from dissectfix import DISSECT_FAMILIES, lora_reranker, one_thread, tiny_evalset  # noqa: F401
from relevance_lens.dissect.evalset import encode_evalset, ir_metrics, mean
from relevance_lens.dissect.lens import LensConfig, fit_logistic, fit_ridge, layer_states, lens_curve
from relevance_lens.errors import InputError
from relevance_lens.model.reranker import pool_last
from relevance_lens.model.roles import blocks
from relevance_lens.score.batching import run_from_scores

METRICS = ["RR@10", "nDCG@10"]


@pytest.mark.parametrize("family", DISSECT_FAMILIES)
def test_last_layer_of_the_lens_is_the_models_own_score(family):
    reranker = lora_reranker(family)
    encoded = encode_evalset(reranker, tiny_evalset(depth=2), max_batch=6)
    states = layer_states(reranker, encoded)
    batch = encoded.batches[0]
    with torch.inference_mode():
        direct = reranker(**encoded.tensors(reranker, batch))
    assert states.scores.shape == (len(encoded.pairs), 5)
    assert states.scores[batch, -1].tolist() == pytest.approx(direct.tolist(), abs=1e-5)
    assert not torch.allclose(states.scores[:, 2], states.scores[:, -1])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lens_equals_head_on_normed_hidden_states(family):
    """Against transformers' own output_hidden_states: entries 0..N-1 are un-normed block inputs,
    and in transformers 5.x the last entry is already the normed output (so it must not be normed again)."""
    reranker = lora_reranker(family)
    encoded = encode_evalset(reranker, tiny_evalset(depth=2), max_batch=64)
    tensors = encoded.tensors(reranker, encoded.batches[0])
    norm = reranker.base_model.get_submodule(reranker.architecture.final_norm)
    with torch.inference_mode():
        out = reranker.hidden_states(**tensors, output_hidden_states=True)
        hidden = out.hidden_states
        manual = [reranker.score(norm(pool_last(h, tensors["attention_mask"]))).squeeze(-1) for h in hidden[:-1]]
        manual.append(reranker.score(pool_last(hidden[-1], tensors["attention_mask"])).squeeze(-1))
        assert torch.allclose(hidden[-1], out.last_hidden_state)  # the last entry is normed already
    lens = layer_states(reranker, encoded).scores[encoded.batches[0]]
    assert torch.allclose(lens, torch.stack(manual, 1), atol=1e-5)


def _silence_blocks(reranker, silent):
    """Blocks whose attention and MLP outputs are zeroed add nothing to the residual stream."""
    with torch.no_grad():
        for index, block in enumerate(blocks(reranker.base_model, reranker.architecture)):
            if index in silent:
                for name in ("self_attn.o_proj", "mlp.down_proj"):
                    layer = block.get_submodule(name)
                    layer.weight.zero_()
                    for b in getattr(layer, "lora_B", {}).values():
                        b.weight.zero_()


def test_known_answer_only_block_1_writes_to_the_stream():
    """Blocks 0, 2, 3 silenced: layers 0 and 1 hold only the EOS embedding (every pair alike,
    so the ranking is the tie order), and layers 2, 3, 4 all equal the model's final ranking."""
    reranker = lora_reranker("llama")
    _silence_blocks(reranker, {0, 2, 3})
    evalset = tiny_evalset(depth=3)
    encoded = encode_evalset(reranker, evalset, max_batch=8)
    metrics = ir_metrics(evalset, METRICS)
    result = lens_curve(reranker, encoded, metrics)
    ties = {m: mean(fn(run_from_scores(encoded.pairs, [0.0] * len(encoded.pairs)))) for m, fn in metrics.items()}
    scores = layer_states(reranker, encoded).scores
    assert torch.allclose(scores[:, 0], scores[:1, 0].expand(len(encoded.pairs)))
    assert result.lens[0] == pytest.approx(ties) and result.lens[1] == pytest.approx(ties)
    assert result.lens[2] == result.lens[3] == result.lens[4]
    final = {m: mean(fn(run_from_scores(encoded.pairs, scores[:, 4].tolist()))) for m, fn in metrics.items()}
    assert result.lens[4] == pytest.approx(final)
    assert result.n_queries == 6 and result.probe is None


def _separable(n=200, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen)
    y = (x[:, 2] - 0.5 * x[:, 5] > 0).float()
    return x * 3 + 1, y  # shifted and scaled: the fitters standardize


@pytest.mark.parametrize("fit", [fit_ridge, fit_logistic])
def test_probes_separate_a_linearly_separable_set(fit):
    x, y = _separable()
    probe = fit(x, y, 1e-3)
    scores = probe(x)
    pos, neg = scores[y == 1], scores[y == 0]
    auc = (pos[:, None] > neg[None, :]).double().mean().item()
    assert auc > 0.99
    shuffled = probe(x[:, torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(1))])
    assert (shuffled[y == 1][:, None] > shuffled[y == 0][None, :]).double().mean().item() < 0.9


def test_ridge_matches_closed_form_least_squares():
    x, y = _separable(n=50, dim=6)
    probe = fit_ridge(x, y, 0.0)
    design = torch.cat([x.double(), torch.ones(50, 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(design, y.double()[:, None]).solution.squeeze(1)
    assert probe(x).tolist() == pytest.approx((design @ solution).tolist(), abs=1e-8)


def test_probe_curve_on_the_tiny_model():
    reranker = lora_reranker("llama")
    evalset = tiny_evalset(depth=3)
    encoded = encode_evalset(reranker, evalset, max_batch=8)
    metrics = ir_metrics(evalset, METRICS)
    result = lens_curve(
        reranker, encoded, metrics, LensConfig(probe="logistic", l2=1e-3), train=encoded, train_qrels=evalset.qrels
    )
    ties = {m: mean(fn(run_from_scores(encoded.pairs, [0.0] * len(encoded.pairs)))) for m, fn in metrics.items()}
    assert len(result.probe) == 5 and result.probe_kind == "logistic"
    assert result.probe[0] == pytest.approx(ties)  # layer 0: the EOS embedding, the same for every pair
    assert result.probe[4]["RR@10"] == pytest.approx(1.0)  # 18 pairs in 32 dimensions: fitted on itself, separable
    with pytest.raises(InputError, match="needs a train split"):
        lens_curve(reranker, encoded, metrics, LensConfig(probe="ridge"))
    with pytest.raises(InputError, match="expected none, ridge or logistic"):
        LensConfig(probe="svm")
