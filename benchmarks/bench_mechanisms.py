"""Cost of the mechanisms analyses on the embedded model: head ablations and token attributions.

    python benchmarks/bench_mechanisms.py                      # SmolLM2-135M, synthetic r8 adapter
    python benchmarks/bench_mechanisms.py --layers 29 --queries 5 --steps 32

``heads``: the drop-head sweep (:func:`relevance_lens.dissect.heads.analyze_heads`' sweep) on the
heads of ``--layers`` over ``--queries`` FAQ dev queries x ``--depth`` passages; its forward work
(the sweep driver's own count: blocks run x padded tokens, cached vs naive) and wall time.
``attribute``: integrated gradients of one query-passage pair with ``--steps`` nodes, fine-tuned
and base + head; wall time per pair and its completeness gap. fp32, this process's threads.
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
from common import RESULTS, machine, machine_line, markdown_table, publish  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    from relevance_lens.dissect.ablate import SweepConfig, sweep
    from relevance_lens.dissect.attribute import integrated_gradients
    from relevance_lens.dissect.evalset import encode_evalset, faq_evalset, ir_metrics
    from relevance_lens.dissect.heads import HEAD_PARTS, build_head_variants, head_parts
    from relevance_lens.dissect.switch import switch_off

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", type=int, nargs="+", default=[29])
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = synthetic_adapter(args.model, Path(tmp) / "adapter", args.max_length)
        reranker = load_reranker(args.model, adapter, args.max_length)
        evalset = faq_evalset("dev", args.depth, args.queries)
        encoded = encode_evalset(reranker, evalset)
        variants = build_head_variants("drop-head", head_parts(reranker), reranker.base_config, args.layers)
        start = time.perf_counter()
        result = sweep(reranker, variants, encoded, ir_metrics(evalset, ["nDCG@10"]), SweepConfig(), kind=HEAD_PARTS)
        heads_s = time.perf_counter() - start
        qid = evalset.query_ids[0]
        docid = next(iter(evalset.qrels[qid]))
        ids = reranker.encode([(evalset.queries[qid], evalset.corpus[docid])])[0]
        timings = {}
        for name, ctx in (("fine-tuned", None), ("base + head", switch_off(reranker, frozenset()))):
            start = time.perf_counter()
            if ctx is None:
                found = integrated_gradients(reranker, ids, "pad", args.steps)
            else:
                with ctx:
                    found = integrated_gradients(reranker, ids, "pad", args.steps)
            timings[name] = (time.perf_counter() - start, found.gap)
    info = machine(measure=False)
    record = {
        "machine": info,
        "model": args.model,
        "heads": {
            "layers": args.layers,
            "variants": len(variants),
            "pairs": len(encoded.pairs),
            "work_computed": result.work.computed,
            "work_naive": result.work.naive,
            "merged": result.work.merged,
            "seconds": heads_s,
        },
        "attribute": {
            "tokens": len(ids),
            "steps": args.steps,
            **{k: {"seconds": s, "gap": g} for k, (s, g) in timings.items()},
        },
    }
    rows = [
        [
            "heads drop-head",
            f"layers {args.layers}: {len(variants)} head units, {len(encoded.pairs)} pairs",
            f"{result.work.computed:,} of {result.work.naive:,} layer-tokens",
            f"{heads_s:.1f}",
        ]
    ]
    rows += [
        ["attribute", f"{name}: 1 pair, {len(ids)} tokens, {args.steps} steps (gap {g:.2%})", "-", f"{s:.1f}"]
        for name, (s, g) in timings.items()
    ]
    markdown = f"{machine_line(info)}\n\n" + markdown_table(["analysis", "what", "forward work", "seconds"], rows)
    return publish("mechanisms", record, markdown, args.results)


if __name__ == "__main__":
    main()
