"""Paired significance over queries, and Holm's correction across the variants of one sweep.

IR convention: two systems are compared on the same queries, one value per query; the test
asks whether the mean per-query difference could have come from randomly swapping the two
systems' labels query by query (the paired randomization, or sign-flip, test; Smucker,
Allan & Carterette 2007 found it agrees with the t-test and is free of its assumptions).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from relevance_lens.errors import InputError

PERMUTATIONS = 10_000
SEED = 0


def paired_randomization(
    a: Sequence[float], b: Sequence[float], permutations: int = PERMUTATIONS, seed: int = SEED
) -> float:
    """Two-sided p-value of mean(a - b) = 0 under random sign flips of the per-query differences.

    ``a`` and ``b`` hold one value per query, in the same query order. The p-value counts the
    observed assignment among the permutations ((hits + 1) / (permutations + 1)), so it is
    never 0. Identical systems give 1.0. Deterministic for a given ``seed``.
    """
    a_values, b_values = _per_query(a, "first"), _per_query(b, "second")
    if a_values.size != b_values.size:  # compared before subtracting: numpy would broadcast a one-item list
        raise InputError(
            f"paired test: expected two equal-length lists of per-query values, got {a_values.size} and {b_values.size}"
        )
    diff = a_values - b_values
    if permutations < 1:
        raise InputError(f"permutations {permutations}: expected a positive number (10000 is usual)")
    observed = abs(diff.mean()) if diff.size else 0.0
    if diff.size == 0 or not np.any(diff):
        return 1.0
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, 2_000_000 // diff.size)  # bound memory: chunk x queries signs at a time
    # A small tolerance so that permutations tying the observed statistic count as hits.
    threshold = observed - 1e-12 * max(1.0, observed)
    for start in range(0, permutations, chunk):
        n = min(chunk, permutations - start)
        signs = rng.integers(0, 2, size=(n, diff.size), dtype=np.int8) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ diff) / diff.size >= threshold))
    return (hits + 1) / (permutations + 1)


def _per_query(values: Sequence[float], which: str) -> np.ndarray:
    """One system's per-query values as a flat float array; NaN or inf is refused, not tested."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"paired test: the {which} system's values are not numbers ({exc})") from None
    if array.ndim != 1:
        raise InputError(f"paired test: the {which} system's values have shape {array.shape}; expected one per query")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise InputError(
            f"paired test: the {which} system's value for query #{bad[0]} is {array[bad[0]]} ({bad.size} not finite); "
            "expected a number per query (with NaN the test would return its smallest possible p-value)"
        )
    return array


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down), in the input order.

    scipy has no Holm. Sort ascending; the k-th smallest (k from 0) is multiplied by
    (m - k); a running maximum keeps the adjusted values monotone (a hypothesis is never
    rejected when one with a smaller raw p-value is not); cap at 1.
    """
    m = len(p_values)
    bad = [p for p in p_values if not 0.0 <= p <= 1.0]  # NaN fails both comparisons
    if bad:
        raise InputError(f"Holm correction: p-value {bad[0]} is not in [0, 1]; expected the p-values of one sweep")
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, (m - k) * p_values[i])
        adjusted[i] = min(1.0, running)
    return adjusted
