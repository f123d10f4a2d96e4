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
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.ndim != 1 or diff.size != len(b):
        raise InputError(f"paired test: expected two equal-length lists of per-query values, got {len(a)} and {len(b)}")
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


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down), in the input order.

    scipy has no Holm. Sort ascending; the k-th smallest (k from 0) is multiplied by
    (m - k); a running maximum keeps the adjusted values monotone (a hypothesis is never
    rejected when one with a smaller raw p-value is not); cap at 1.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, (m - k) * p_values[i])
        adjusted[i] = min(1.0, running)
    return adjusted
