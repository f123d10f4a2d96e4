"""Cost of the mechanisms analyses on the embedded model: head ablations, token attributions and
activation patching.

    python benchmarks/bench_mechanisms.py                      # SmolLM2-135M, synthetic r8 adapter
    python benchmarks/bench_mechanisms.py --layers 29 --queries 5 --steps 32
    python benchmarks/bench_mechanisms.py --parts patch --pairs 4

``heads``: the drop-head sweep (:func:`relevance_lens.dissect.heads.analyze_heads`' sweep) on the
heads of ``--layers`` over ``--queries`` FAQ dev queries x ``--depth`` passages; its forward work
(the sweep driver's own count: blocks run x padded tokens, cached vs naive) and wall time.
``attribute``: integrated gradients of one query-passage pair with ``--steps`` nodes, fine-tuned
and base + head; wall time per pair and its completeness gap.
``patch``: activation patching (:func:`relevance_lens.dissect.patch.patch_pair`) of ``--pairs``
relevant/non-relevant pairs from ``--patch-queries`` FAQ dev queries x ``--depth``, every
component x position class x layer, fine-tuned and base + head; sequence forwards counted at the
reranker's forward (rows x padded tokens) against the module's formula
``models x pairs x (2 + components x positions x layers)``, and wall time. Before the table is
written it checks that patching the residual stream at all positions moves the whole difference
(1, up to float rounding). fp32, this process's threads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_scoring import load_reranker, synthetic_adapter  # noqa: E402
from common import (  # noqa: E402
    RESULTS,
    BenchmarkError,
    load_average,
    machine,
    machine_line,
    markdown_table,
    publish,
)

PARTS = ("heads", "attribute", "patch")
#: How far the target's score patched with the source's whole residual stream may lie from the
#: source's score (fp32 rounding; batched rows run other kernels than the single source run).
FULL_TRANSFER_TOLERANCE = 1e-3


def bench_heads(reranker, args) -> tuple[dict, list[list[str]]]:
    """The drop-head sweep on ``args.layers``: forward work and wall time."""
    from relevance_lens.dissect.ablate import SweepConfig, sweep
    from relevance_lens.dissect.evalset import encode_evalset, faq_evalset, ir_metrics
    from relevance_lens.dissect.heads import HEAD_PARTS, build_head_variants, head_parts

    evalset = faq_evalset("dev", args.depth, args.queries)
    encoded = encode_evalset(reranker, evalset)
    variants = build_head_variants("drop-head", head_parts(reranker), reranker.base_config, args.layers)
    start = time.perf_counter()
    result = sweep(reranker, variants, encoded, ir_metrics(evalset, ["nDCG@10"]), SweepConfig(), kind=HEAD_PARTS)
    seconds = time.perf_counter() - start
    record = {
        "layers": args.layers,
        "variants": len(variants),
        "pairs": len(encoded.pairs),
        "work_computed": result.work.computed,
        "work_naive": result.work.naive,
        "merged": result.work.merged,
        "seconds": seconds,
    }
    what = f"layers {args.layers}: {len(variants)} head units, {len(encoded.pairs)} pairs"
    work = f"{result.work.computed:,} of {result.work.naive:,} layer-tokens"
    return record, [["heads drop-head", what, work, f"{seconds:.1f}"]]


def bench_attribute(reranker, args) -> tuple[dict, list[list[str]]]:
    """Integrated gradients of one pair, fine-tuned and base + head: wall time and completeness gap."""
    from contextlib import nullcontext

    from relevance_lens.dissect.attribute import integrated_gradients
    from relevance_lens.dissect.evalset import faq_evalset
    from relevance_lens.dissect.settings import AttributeSettings
    from relevance_lens.dissect.switch import switch_off

    evalset = faq_evalset("dev", args.depth, args.queries)
    qid = evalset.query_ids[0]
    docid = next(iter(evalset.qrels[qid]))
    ids = reranker.encode([(evalset.queries[qid], evalset.corpus[docid])])[0]
    # The analysis's own rule: adaptive from args.steps nodes until the gap is within its tolerance
    # (or its budget is spent), so the time is what `analyze attribute` pays, not a fixed rule's.
    rule = AttributeSettings(steps=args.steps)
    timings = {}
    for name, ctx in (("fine-tuned", nullcontext()), ("base + head", switch_off(reranker, frozenset()))):
        start = time.perf_counter()
        with ctx:
            found = integrated_gradients(
                reranker, ids, "pad", rule.steps, tolerance=rule.tolerance, max_steps=rule.max_steps
            )
        timings[name] = (time.perf_counter() - start, found.gap, found.steps)
    record = {
        "tokens": len(ids),
        "steps": rule.steps,
        "tolerance": rule.tolerance,
        "max_steps": rule.max_steps,
        **{k: {"seconds": s, "gap": g, "steps_used": n} for k, (s, g, n) in timings.items()},
    }
    rows = [
        [
            "attribute",
            f"{name}: 1 pair, {len(ids)} tokens, {n} gradient steps (from {rule.steps}; gap {g:.2%}, "
            f"tolerance {rule.tolerance:.0%})",
            "-",
            f"{s:.1f}",
        ]
        for name, (s, g, n) in timings.items()
    ]
    return record, rows


class ForwardCounter:
    """Counts the reranker's forwards: sequences (batch rows) and padded tokens."""

    def __init__(self, reranker):
        self.sequences = self.tokens = 0
        self._handle = reranker.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        self.sequences += int(ids.shape[0])
        self.tokens += int(ids.numel())

    def close(self) -> None:
        self._handle.remove()


def bench_patch(reranker, args) -> tuple[dict, list[list[str]]]:
    """Activation patching, the analysis's own pair choice, alignment and driver, per model."""
    from relevance_lens.dissect.evalset import faq_evalset
    from relevance_lens.dissect.patch import align_pair, chosen_pairs, models, patch_pair
    from relevance_lens.model.roles import num_layers

    evalset = faq_evalset("dev", args.depth, args.patch_queries)
    aligned = [a for a in (align_pair(reranker, evalset, p) for p in chosen_pairs(evalset, args.pairs)) if a]
    layers = num_layers(reranker.base_config)
    record: dict = {
        "pairs": len(aligned),
        "components": args.components,
        "positions": args.positions,
        "layers": layers,
        "passage_tokens": [a.passage_tokens for a in aligned],
        "sequence_tokens": [len(a.target_ids) for a in aligned],
        "models": {},
    }
    rows = []
    for name, switch in models(reranker, []):
        counter = ForwardCounter(reranker)
        start = time.perf_counter()
        try:
            with switch:
                results = [patch_pair(reranker, a, args.components, args.positions) for a in aligned]
        finally:
            counter.close()
        seconds = time.perf_counter() - start
        expected = len(aligned) * (2 + len(args.components) * len(args.positions) * layers)
        if counter.sequences != expected:
            raise BenchmarkError(f"patch {name}: {counter.sequences} sequence forwards, the formula says {expected}")
        if "resid" in args.components and "all" in args.positions:
            worst = max(abs(s - r.source_score) for r in results for s in r.patched["resid", "all"])
            if worst > FULL_TRANSFER_TOLERANCE:
                raise BenchmarkError(
                    f"patch {name}: resid patched at all positions lands {worst:.2e} from the source's score, "
                    f"expected within {FULL_TRANSFER_TOLERANCE}"
                )
        label = "fine-tuned" if name == "adapter" else "base + head"
        record["models"][label] = {
            "sequence_forwards": counter.sequences,
            "padded_tokens": counter.tokens,
            "seconds": seconds,
            "seconds_per_pair": seconds / max(1, len(aligned)),
            "score_gaps": [r.gap for r in results],
        }
        what = (
            f"{label}: {len(aligned)} pairs x {len(args.components)} components x {len(args.positions)} "
            f"positions x {layers} layers"
        )
        work = f"{counter.sequences:,} sequence forwards ({counter.tokens:,} padded tokens)"
        rows.append(["patch", what, work, f"{seconds:.1f}"])
    return record, rows


def main(argv: list[str] | None = None) -> dict:
    from relevance_lens.dissect.settings import PATCH_COMPONENTS, PATCH_POSITIONS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--layers", type=int, nargs="+", default=[29], help="heads: layers whose heads are dropped")
    parser.add_argument("--queries", type=int, default=5, help="heads, attribute: FAQ dev queries")
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--steps", type=int, default=32, help="attribute: starting nodes (then refined)")
    parser.add_argument("--pairs", type=int, default=4, help="patch: relevant/non-relevant pairs (the study's 4)")
    parser.add_argument("--patch-queries", type=int, default=10, help="patch: FAQ dev queries the pairs come from")
    parser.add_argument("--components", nargs="+", choices=PATCH_COMPONENTS, default=list(PATCH_COMPONENTS))
    parser.add_argument("--positions", nargs="+", choices=PATCH_POSITIONS, default=list(PATCH_POSITIONS))
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    benches = {"heads": bench_heads, "attribute": bench_attribute, "patch": bench_patch}
    info = machine(measure=False)
    record: dict = {"machine": info, "model": args.model, "max_length": args.max_length}
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        adapter = synthetic_adapter(args.model, Path(tmp) / "adapter", args.max_length)
        reranker = load_reranker(args.model, adapter, args.max_length)
        for part in PARTS:
            if part in args.parts:
                record[part], part_rows = benches[part](reranker, args)
                rows += part_rows
    record["load_average_end"] = load_average()
    end = f" Load average at end: {record['load_average_end']:.2f}." if record["load_average_end"] is not None else ""
    markdown = (
        f"**Mechanisms** — {machine_line(info)}\n\n"
        f"{args.model}, synthetic r8 adapter (all roles), fp32, max length {args.max_length}.{end}\n\n"
        + markdown_table(["analysis", "what", "forward work", "seconds"], rows)
    )
    return publish("mechanisms", record, markdown, args.results)


if __name__ == "__main__":
    main()
