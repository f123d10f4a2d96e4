"""Named kill points, for fault-injection tests: the process dies by SIGKILL where a test says.

``kill_point("store.commit")`` sits at a real stage boundary of the library (between a store
transaction's writes and its commit, between a checkpoint's files and its manifest...). It does
nothing unless the environment variable ``RELEVANCE_LENS_KILL_AT`` names it::

    RELEVANCE_LENS_KILL_AT=store.commit:3 relevance-lens study run my.toml

kills the process by SIGKILL (no handler, no cleanup, as the kernel's OOM killer or a cluster's
preemption would) the 3rd time this process reaches ``store.commit``. Unset, a kill point costs
one environment lookup. ``RELEVANCE_LENS_KILL_LOG=FILE`` appends each point's name to ``FILE``
as it is reached (what a test needs to pick ``N`` within a run's reach). ``tests/test_faults.py``
kills a tiny study at seeded points and checks that reruns end where an uninterrupted run does.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

from relevance_lens.errors import InputError

KILL_AT = "RELEVANCE_LENS_KILL_AT"
KILL_LOG = "RELEVANCE_LENS_KILL_LOG"

#: Every kill point, in the order a study reaches them, and what has happened when it fires.
POINTS: dict[str, str] = {
    "train.step": "a training step's optimizer update is done, its checkpoint (if due) not yet written",
    "train.checkpoint": "a checkpoint's adapter and head are written, the Trainer's optimizer and state not yet",
    "train.manifest": "a checkpoint's every file is written but its manifest, which marks it complete",
    "train.final": "final.tmp/ is written, not yet moved to final/",
    "train.summary": "final/ is in place, train_summary.json (the run is done) not yet written",
    "store.commit": "a store transaction's rows are inserted, not yet committed",
    "score.batch": "one batch of an evaluation's query-passage pairs is scored, the next not yet",
    "ablate.variant": "one ablation variant (a set of ΔW parts switched off) is scored on a batch",
    "study.marker": "an analysis cell's rows are stored, its done-marker row not yet",
    "report.figure": "one figure of the report is drawn, the page not yet written",
    "report.page": "the report page is written to its temporary file, not yet renamed into place",
}

_reached: Counter[str] = Counter()


def kill_point(name: str) -> None:
    """SIGKILL this process if ``RELEVANCE_LENS_KILL_AT`` is ``name:N`` and this is the N-th time here."""
    plan = os.environ.get(KILL_AT)
    log = os.environ.get(KILL_LOG)
    if plan is None and log is None:
        return
    if name not in POINTS:
        raise InputError(f"kill_point({name!r}): not a known kill point; add it to relevance_lens.faults.POINTS")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(name + "\n")
    if plan:
        target, count = parse_plan(plan)
        if name == target:
            _reached[name] += 1
            if _reached[name] == count:
                os.kill(os.getpid(), signal.SIGKILL)


def parse_plan(plan: str) -> tuple[str, int]:
    """``name:N`` -> ``(name, N)``; anything else is a one-line error naming the variable."""
    name, _, count = plan.rpartition(":")
    if name not in POINTS or not count.isdigit() or int(count) < 1:
        raise InputError(
            f"{KILL_AT}={plan!r}: expected NAME:N with N >= 1 and NAME one of {', '.join(POINTS)}; unset it to run "
            "without fault injection"
        )
    return name, int(count)
