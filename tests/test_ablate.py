"""Ablating parts of ΔW: the switch against hand-merged weights, cached sweeps against naive ones."""

from dataclasses import asdict

import pytest
import torch
from scipy import stats as scipy_stats

from dissectfix import DISSECT_FAMILIES, bare_reranker, lora_reranker, one_thread, tiny_evalset  # noqa: F401
from relevance_lens.data.formats import Passage
from relevance_lens.dissect import ablate
from relevance_lens.dissect.ablate import (
    SWEEPS,
    SweepConfig,
    Variant,
    build_variants,
    lora_parts,
    restart_plan,
    score_variants,
    sweep,
    switch_off,
)
from relevance_lens.dissect.evalset import encode_evalset, ir_metrics, mean
from relevance_lens.errors import InputError
from relevance_lens.evaluate.stats import holm, paired_randomization
from relevance_lens.model.roles import MHA_ROLES, MLP_ROLES, role_of_module

QUERY = "what is the capital of france"
PASSAGES = [
    Passage("d1", "paris", "paris is the capital of france"),
    Passage("d2", "", "bananas are yellow fruit"),
    Passage("d3", "python", "how do i sort a list in python use sorted"),
]


def _fused_rows(family: str, role: str) -> torch.Tensor:
    """Hand-written q/k/v output rows of the tiny configs (hidden 32, 4 heads of 8)."""
    i = "qkv".index(role)
    if family == "gpt2":  # contiguous [q | k | v]
        return torch.arange(32 * i, 32 * (i + 1))
    # gpt_neox: per head [q k v], 24 rows per head
    return torch.cat([torch.arange(24 * h + 8 * i, 24 * h + 8 * i + 8) for h in range(4)])


def merged_reference(family: str, reranker, keep) -> torch.nn.Module:
    """A plain model (no LoRA layers) whose weights are W + the kept parts of PEFT's own ΔW."""
    plain = bare_reranker(family)
    plain.score.load_state_dict(reranker.score.state_dict())
    arch = reranker.architecture
    with torch.no_grad():
        for name, module in reranker.base_model.named_modules():
            if not hasattr(module, "get_delta_weight"):
                continue
            layer, roles = role_of_module(arch, name)
            delta = module.get_delta_weight("default")  # already in the base weight's layout
            mask = torch.zeros_like(delta)
            for role in roles:
                if (layer, role) in keep:
                    rows = _fused_rows(family, role) if len(roles) > 1 else slice(None)
                    if arch.conv1d:
                        mask[:, rows] = 1
                    else:
                        mask[rows] = 1
            plain.base_model.get_submodule(name).weight += delta * mask
    return plain.eval()


MODES = {
    "drop layer 1": lambda parts: parts - {p for p in parts if p[0] == 1},
    "keep layer 2": lambda parts: {p for p in parts if p[0] == 2},
    "drop q": lambda parts: {p for p in parts if p[1] != "q"},
    "keep k": lambda parts: {p for p in parts if p[1] == "k"},
    "keep v": lambda parts: {p for p in parts if p[1] == "v"},
    "mha only": lambda parts: {p for p in parts if p[1] in MHA_ROLES},
    "mlp only": lambda parts: {p for p in parts if p[1] in MLP_ROLES},
    "drop L2.k": lambda parts: parts - {(2, "k")},
    "keep L0.q + L3.down": lambda parts: {(0, "q"), (3, "down")} & parts,
    "none": lambda parts: set(),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("family", DISSECT_FAMILIES)
def test_switch_equals_hand_merged_weights(family, mode):
    reranker = lora_reranker(family)
    parts = lora_parts(reranker)
    keep = frozenset(MODES[mode](parts))
    full = torch.tensor(reranker.score_pairs(QUERY, PASSAGES))
    with switch_off(reranker, keep):
        switched = torch.tensor(reranker.score_pairs(QUERY, PASSAGES))
    expected = torch.tensor(merged_reference(family, reranker, keep).score_pairs(QUERY, PASSAGES))
    assert torch.allclose(switched, expected, rtol=1e-4, atol=1e-4), (switched, expected)
    assert not torch.allclose(switched, full, atol=1e-3)  # the mode really removed something
    assert torch.equal(torch.tensor(reranker.score_pairs(QUERY, PASSAGES)), full)  # and it was restored


@pytest.mark.parametrize("family", DISSECT_FAMILIES)
def test_weight_swap_is_as_exact_as_the_lora_switch_and_restores_the_model(family):
    """Every mode of the table through merged weights (weightswap) and through LoRA layers, both
    against the LoRA layers in fp64: the swap may round differently, never worse than 4x as much."""
    reranker = lora_reranker(family)
    before = {k: v.clone() for k, v in reranker.state_dict().items()}
    full = torch.tensor(reranker.score_pairs(QUERY, PASSAGES))
    encoded = encode_evalset(reranker, tiny_evalset(depth=2), max_batch=6)
    parts = lora_parts(reranker)
    variants = [Variant(mode, frozenset(MODES[mode](parts))) for mode in MODES]
    swapped, work, _ = score_variants(reranker, variants, encoded, SweepConfig(cached=False, merge="on"))
    switched, lora_work, _ = score_variants(reranker, variants, encoded, SweepConfig(cached=False, merge="off"))
    assert work.merged and not lora_work.merged
    after = reranker.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.tensor(reranker.score_pairs(QUERY, PASSAGES)), full)  # LoRA layers are live again
    exact, _, _ = score_variants(reranker.double(), variants, encoded, SweepConfig(cached=False, merge="off"))
    for key in exact:
        truth = torch.tensor(exact[key])
        swap_error = float((torch.tensor(swapped[key], dtype=torch.float64) - truth).abs().max())
        lora_error = float((torch.tensor(switched[key], dtype=torch.float64) - truth).abs().max())
        assert swap_error <= 4 * lora_error + 1e-4 * float(truth.abs().max()), (key, swap_error, lora_error)
    assert swapped["drop q"] != pytest.approx(swapped["full"], abs=1e-3)


def test_merge_setting_is_checked():
    reranker = lora_reranker("llama")
    encoded = encode_evalset(reranker, tiny_evalset(depth=2))
    with pytest.raises(InputError, match="merge 'yes': expected auto, on or off"):
        score_variants(reranker, [], encoded, SweepConfig(merge="yes"))


def test_switch_restores_weights_after_an_error():
    reranker = lora_reranker("gpt_neox")
    before = {k: v.clone() for k, v in reranker.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with switch_off(reranker, frozenset()):
            assert all(not v.any() for k, v in reranker.state_dict().items() if "lora_B" in k)
            raise RuntimeError("boom")
    after = reranker.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "family,targets,expected_roles",
    [
        ("gpt_neox", "q", {"q"}),
        ("gpt2", "k,v", {"k", "v"}),
        ("gpt2", "mlp", {"up", "down"}),
        ("llama", "up,gate", {"gate", "up"}),
        ("llama", "all", {"q", "k", "v", "o", "gate", "up", "down"}),
    ],
)
def test_parts_of_an_adapter(family, targets, expected_roles):
    parts = lora_parts(lora_reranker(family, targets=targets))
    assert parts == {(layer, role) for layer in range(4) for role in expected_roles}


@pytest.mark.parametrize(
    "name,count,first",
    [
        ("drop-layer", 4, ("-L0", 21)),
        ("keep-layer", 4, ("L0", 7)),
        ("window", 2, ("L0-2", 21)),
        ("bottom-up", 4, ("L0-0", 7)),
        ("top-down", 4, ("L0-3", 28)),
        ("roles", 16, ("-q", 24)),
        ("drop-role", 9, ("-q", 24)),
        ("keep-role", 9, ("q", 4)),
        ("drop-layer-role", 28, ("-L0.q", 27)),
        ("keep-layer-role", 28, ("L0.q", 1)),
    ],
)
def test_sweep_builders(name, count, first):
    parts = frozenset((l, r) for l in range(4) for r in ("q", "k", "v", "o", "gate", "up", "down"))
    variants = build_variants(name, parts, 4)
    assert len(variants) == count
    assert (variants[0].name, len(variants[0].keep)) == first
    assert all(v.keep <= parts for v in variants)


@pytest.mark.parametrize("roles", [("q", "k", "v", "o", "gate", "up", "down"), ("q", "up"), ("q", "k")])
def test_roles_is_drop_role_plus_keep_role(roles):
    """The two halves of the roles sweep together are the whole sweep, variant for variant."""
    parts = frozenset((l, r) for l in range(3) for r in roles)
    whole = {(v.name, v.keep) for v in build_variants("roles", parts, 3)}
    halves = [{(v.name, v.keep) for v in build_variants(n, parts, 3)} for n in ("drop-role", "keep-role")]
    assert halves[0] | halves[1] == whole
    assert not {n for n, _ in halves[0]} & {n for n, _ in halves[1]} - {"mha", "mlp"}


def test_unknown_sweep_and_empty_adapter_are_refused():
    with pytest.raises(InputError, match="expected one of drop-layer"):
        build_variants("layers", frozenset({(0, "q")}), 4)
    with pytest.raises(InputError, match="no LoRA parts"):
        build_variants("roles", frozenset(), 4)
    with pytest.raises(InputError, match="between 1 and the 4 layers"):
        build_variants("window", frozenset({(0, "q")}), 4, window=5)


PARTS = frozenset((l, r) for l in range(4) for r in ("q", "up"))


@pytest.mark.parametrize(
    "keep,plan",
    [
        (PARTS, ("full", 4)),
        (frozenset(), ("base", 4)),
        (PARTS - {(2, "up")}, ("full", 2)),
        (frozenset({(2, "q"), (3, "q")}), ("base", 2)),
        (PARTS - {(0, "q")}, ("full", 0)),
        (frozenset({(0, "q")}), ("full", 0)),  # differs from both at layer 0: a full forward
    ],
)
def test_restart_plan(keep, plan):
    assert restart_plan(keep, PARTS, 4) == plan


@pytest.mark.parametrize("merge", ["on", "off"])
@pytest.mark.parametrize("family", DISSECT_FAMILIES)
def test_cached_sweeps_equal_naive(family, merge):
    """Every named sweep at once (one full and one base forward per batch serve all of them),
    through merged weights and through LoRA layers."""
    reranker = lora_reranker(family)
    encoded = encode_evalset(reranker, tiny_evalset(depth=2), max_batch=6)
    assert len(encoded.batches) > 1  # the cache really is per batch
    parts = lora_parts(reranker)
    variants = [Variant(f"{name}:{v.name}", v.keep) for name in SWEEPS for v in build_variants(name, parts, 4)]
    cached, work, fallback = score_variants(reranker, variants, encoded, SweepConfig(cached=True, merge=merge))
    naive, naive_work, _ = score_variants(reranker, variants, encoded, SweepConfig(cached=False, merge=merge))
    assert fallback is None and work.merged == naive_work.merged == (merge == "on")
    assert naive_work.computed == naive_work.naive and work.computed < 0.75 * work.naive
    assert len(naive) == len(variants) + 2
    for key in naive:
        assert cached[key] == pytest.approx(naive[key], abs=1e-4), key
    assert len({round(s, 4) for s in cached["full"]}) > 1


def test_work_accounting_of_a_drop_layer_sweep():
    reranker = lora_reranker("llama")
    encoded = encode_evalset(reranker, tiny_evalset(depth=3), max_batch=8)
    variants = build_variants("drop-layer", lora_parts(reranker), 4)
    _, work, _ = score_variants(reranker, variants, encoded, SweepConfig())
    tokens = sum(encoded.tokens(b) for b in encoded.batches)
    first = encoded.tokens(encoded.batches[0])
    # full + base: 4 blocks each. -L1..-L3 restart from the full adapter at 1..3 (3+2+1 blocks);
    # -L0 agrees with the *base* on layer 0 and restarts from it at 1 (3 blocks). One check: 2.
    assert work.naive == (2 + 4) * 4 * tokens
    assert work.computed == (8 + 3 + 3 + 2 + 1) * tokens + 2 * first


def test_a_restart_that_breaks_falls_back_to_naive(monkeypatch):
    from relevance_lens.model.hooks import start_at_layer

    def broken(base_model, arch, layer, hidden):
        return start_at_layer(base_model, arch, layer, hidden * 2)

    reranker = lora_reranker("llama")
    encoded = encode_evalset(reranker, tiny_evalset(depth=3), max_batch=8)
    variants = build_variants("drop-layer", lora_parts(reranker), 4)
    naive, _, _ = score_variants(reranker, variants, encoded, SweepConfig(cached=False))
    monkeypatch.setattr(ablate, "start_at_layer", broken)
    with pytest.warns(UserWarning, match="running every variant in full"):
        scores, work, fallback = score_variants(reranker, variants, encoded, SweepConfig())
    assert fallback is not None
    assert all(scores[k] == pytest.approx(naive[k], abs=1e-5) for k in naive)


def test_sweeps_together_record_each_ones_work_when_the_restart_breaks(monkeypatch):
    """After a failed restart check, a sweep that restarts nothing still records its own (cached) work."""
    from relevance_lens.model.hooks import start_at_layer

    monkeypatch.setattr(ablate, "start_at_layer", lambda m, a, layer, h: start_at_layer(m, a, layer, h * 2))
    reranker = lora_reranker("llama")
    encoded = encode_evalset(reranker, tiny_evalset(depth=3), max_batch=8)
    parts = lora_parts(reranker)
    named = {name: build_variants(name, parts, 4) for name in ("drop-layer", "roles")}
    metrics = ir_metrics(tiny_evalset(depth=3), ["RR@10"])
    with pytest.warns(UserWarning, match="running every variant in full"):
        together = ablate.sweeps(reranker, named, encoded, metrics, SweepConfig(permutations=100))
        alone = [sweep(reranker, v, encoded, metrics, SweepConfig(permutations=100), name=k) for k, v in named.items()]
    for joint, single in zip(together, alone):
        assert joint.work == single.work and joint.fallback == single.fallback
    assert together[0].fallback is not None and together[1].fallback is None


def _relevant_score(evalset):
    """A metric as any function of a run: the score margin of the relevant passage over the rest."""

    def metric(run):
        out = {}
        for qid in evalset.query_ids:
            docs = run.get(qid, {})
            rel = [s for d, s in docs.items() if evalset.qrels[qid].get(d)]
            rest = [s for d, s in docs.items() if not evalset.qrels[qid].get(d)]
            out[qid] = (sum(rel) / len(rel) if rel else 0.0) - (sum(rest) / len(rest) if rest else 0.0)
        return out

    return metric


def test_sweep_driver_reports_deltas_and_tests():
    reranker = lora_reranker("llama")
    evalset = tiny_evalset(depth=3)
    encoded = encode_evalset(reranker, evalset, max_batch=8)
    parts = lora_parts(reranker)
    variants = [Variant("everything", parts), Variant("nothing", frozenset()), *build_variants("keep-layer", parts, 4)]
    metrics = {**ir_metrics(evalset, ["RR@10"]), "margin": _relevant_score(evalset)}
    result = sweep(reranker, variants, encoded, metrics, SweepConfig(permutations=2000), name="test")
    by_name = {v.name: v for v in result.variants}
    assert by_name["everything"].delta_full == {"RR@10": 0.0, "margin": 0.0}
    assert by_name["everything"].p_full["margin"] == 1.0
    assert by_name["nothing"].delta_base == {"RR@10": 0.0, "margin": 0.0}
    assert by_name["nothing"].metrics["margin"] == pytest.approx(result.base["margin"])
    assert result.full["margin"] != pytest.approx(result.base["margin"])
    # The function-metric equals a direct computation from the scores.
    direct = _relevant_score(evalset)(
        {q: {d: s for (qq, d), s in zip(encoded.pairs, result.scores["L2"]) if qq == q} for q in evalset.query_ids}
    )
    assert by_name["L2"].metrics["margin"] == pytest.approx(mean(direct))
    assert result.n_queries == 6 and by_name["L2"].layer == 2
    assert all(0 < v.p_full[m] <= 1 for v in result.variants for m in metrics)


@pytest.mark.parametrize("merge", ["on", "off"])
def test_sweeps_run_together_equal_each_run_alone(merge):
    """Sharing the references (and variants two sweeps have in common) changes nothing a sweep reports."""
    reranker = lora_reranker("llama")
    evalset = tiny_evalset(depth=3)
    encoded = encode_evalset(reranker, evalset, max_batch=8)
    parts = lora_parts(reranker)
    named = {name: build_variants(name, parts, 4) for name in ("drop-layer", "roles", "drop-role")}
    metrics = ir_metrics(evalset, ["nDCG@10", "RR@10"])
    config = SweepConfig(permutations=500, merge=merge)
    together = ablate.sweeps(reranker, named, encoded, metrics, config)
    alone = [sweep(reranker, variants, encoded, metrics, config, name=name) for name, variants in named.items()]
    for joint, single in zip(together, alone):
        assert joint.name == single.name and joint.full == single.full and joint.base == single.base
        assert [asdict(v) for v in joint.variants] == [asdict(v) for v in single.variants]
        assert joint.scores.keys() == single.scores.keys()
        for key in single.scores:
            assert joint.scores[key] == pytest.approx(single.scores[key], abs=1e-5), key
        assert set(joint.shared_with) == set(named) - {joint.name}
        # Each records the work it would have cost alone (a stored row must not depend on the grouping)...
        assert joint.work == single.work and joint.fallback == single.fallback
    # ...while the pass itself ran the references once for all three, and drop-role's variants (a part of roles') once.
    shared = together[0].pass_work
    assert all(r.pass_work is shared for r in together)
    assert shared.computed < sum(r.work.computed for r in alone)
    assert shared.naive == sum(r.work.naive for r in alone)
    assert shared.saved > max(r.work.saved for r in alone)


def test_sweep_refuses_reserved_and_duplicate_names():
    reranker = lora_reranker("llama")
    encoded = encode_evalset(reranker, tiny_evalset(depth=3))
    for variants in ([Variant("full", frozenset())], [Variant("a", frozenset()), Variant("a", frozenset())]):
        with pytest.raises(InputError, match="unique"):
            sweep(reranker, variants, encoded, {"m": lambda run: {}})


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    "raw,adjusted",
    [
        ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),
        ([0.2, 0.01], [0.2, 0.02]),
        ([0.5, 0.6, 0.9], [1.0, 1.0, 1.0]),
        ([], []),
    ],
)
def test_holm(raw, adjusted):
    assert holm(raw) == pytest.approx(adjusted)


def test_paired_randomization_matches_an_exact_permutation_test():
    gen = torch.Generator().manual_seed(3)
    a = (torch.rand(10, generator=gen) + 0.2).tolist()
    b = torch.rand(10, generator=gen).tolist()
    exact = scipy_stats.permutation_test(
        (a, b), lambda x, y: sum(x) / len(x) - sum(y) / len(y), permutation_type="samples", n_resamples=float("inf")
    ).pvalue
    assert paired_randomization(a, b, permutations=20000) == pytest.approx(exact, abs=0.01)
    assert paired_randomization(a, a) == 1.0
    assert paired_randomization(a, b, seed=5) == paired_randomization(a, b, seed=5)


@pytest.mark.slow
def test_real_model_restarts_equal_full_forwards():
    """SmolLM2-135M (30 layers, GQA, tied embeddings): cached restarts are exact in fp32, and the
    lens's last layer is the model's own score."""
    from dissectfix import randomize_lora
    from relevance_lens.dissect.evalset import faq_evalset
    from relevance_lens.dissect.lens import layer_states
    from relevance_lens.model.lora import LoraSettings, attach_lora
    from relevance_lens.model.reranker import Reranker, RerankerConfig

    reranker = Reranker.from_pretrained("smollm2-135m", config=RerankerConfig(model="smollm2-135m", max_length=64))
    attach_lora(reranker, LoraSettings(rank=8, targets="all", dropout=0.0))
    randomize_lora(reranker, scale=0.002)
    reranker.eval()
    encoded = encode_evalset(reranker, faq_evalset("test", depth=3, max_queries=2), max_batch=4)
    parts = lora_parts(reranker)
    by_name = {
        v.name: v for name in ("drop-layer", "window", "roles", "top-down") for v in build_variants(name, parts, 30)
    }
    variants = [by_name[n] for n in ("-L0", "-L15", "-L29", "L10-12", "up", "L20-29")]
    cached, work, fallback = score_variants(reranker, variants, encoded, SweepConfig())
    naive, _, _ = score_variants(reranker, variants, encoded, SweepConfig(cached=False))
    assert fallback is None and work.saved > 0.2
    for key in naive:
        assert cached[key] == pytest.approx(naive[key], abs=1e-4), key
    assert cached["-L15"] != pytest.approx(cached["full"], abs=1e-4)
    lens = layer_states(reranker, encoded).scores
    # The lens runs the LoRA layers, the sweep merged weights (merge=auto): fp32 rounding only.
    assert lens[:, -1].tolist() == pytest.approx(cached["full"], rel=1e-5, abs=1e-4)


@pytest.mark.parametrize(
    "n,width,stride,starts",
    [(30, 6, 3, [0, 3, 6, 9, 12, 15, 18, 21, 24]), (10, 4, 4, [0, 4, 6]), (5, 2, 1, [0, 1, 2, 3])],
)
def test_window_stride_starts(n, width, stride, starts):
    from relevance_lens.dissect.ablate import sliding_windows

    parts = frozenset((layer, "q") for layer in range(n))
    variants = sliding_windows(parts, n, width=width, stride=stride)
    assert [v.layer for v in variants] == starts
    assert all(len(v.keep) == width for v in variants)
