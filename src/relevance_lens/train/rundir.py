"""The run folder's layout, owned here alone: every stage that reads or writes a run asks this module.

::

    RUNDIR/run.json               the resolved config, data fingerprints, library versions
    RUNDIR/checkpoint-<step>/     an adapter folder + the Trainer's state; complete once its
                                  manifest.json, written after the Trainer's files, exists
                                  and matches them (see relevance_lens.model.manifest)
    RUNDIR/final/                 the adapter folder of the finished run (moved in whole)
    RUNDIR/train_summary.json     written last: the run is done
    RUNDIR/logs/                  TensorBoard
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from relevance_lens.errors import InputError
from relevance_lens.model.reranker import HEAD_FILE, integrity

RUN_FILE = "run.json"
SUMMARY = "train_summary.json"
FINAL = "final"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"  # the Trainer's last file; the manifest follows it
LOGS = "logs"


def checkpoint_name(step: int) -> str:
    """``checkpoint-<step>``, as the Trainer names its checkpoint folders."""
    return f"{CHECKPOINT_PREFIX}{step}"


def step_of(checkpoint: str | None) -> int | None:
    """The step of a ``checkpoint-<step>`` name; None for ``final``, ``bm25`` or anything else."""
    if not checkpoint or not checkpoint.startswith(CHECKPOINT_PREFIX):
        return None
    tail = checkpoint[len(CHECKPOINT_PREFIX) :]
    return int(tail) if tail.isdigit() else None


def is_run_member(folder: Path) -> bool:
    """Whether an adapter folder is a checkpoint or the final adapter of the run folder above it."""
    return folder.name == FINAL or step_of(folder.name) is not None


def complete_checkpoints(
    run_dir: str | Path, on_corrupt: Callable[[str], None] | None = None
) -> list[tuple[int, Path]]:
    """``checkpoint-<step>`` folders that were written to the end and are intact, by step.

    Complete: the score head and the Trainer's state exist and the manifest written after them
    matches every file it lists. A checkpoint whose manifest is promised but missing was cut
    short and is left out, like one without the Trainer's state. One saved before manifests
    existed has none: it counts on the two files alone, unverified. A corrupted checkpoint raises
    an :class:`InputError` naming the file, or, with ``on_corrupt``, is left out and its one-line
    message passed there (``train --resume`` falls back to an earlier checkpoint that way).
    """
    written = sorted(
        (step, path)
        for path in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*")
        if (step := step_of(path.name)) is not None
        and (path / TRAINER_STATE).is_file()
        and (path / HEAD_FILE).is_file()
    )
    return [(step, path) for step, path in written if _intact(path, on_corrupt)]  # by step: the first bad one is named


def _intact(folder: Path, on_corrupt: Callable[[str], None] | None) -> bool:
    try:
        return integrity(folder) != "incomplete"
    except InputError as exc:
        if on_corrupt is None:
            raise
        on_corrupt(str(exc))
        return False


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete ``checkpoint-<step>`` folders by step, then ``final`` when present; a corrupted one is an error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    found = [path for _, path in complete_checkpoints(run_dir)]
    if (run_dir / FINAL / HEAD_FILE).is_file() and _intact(run_dir / FINAL, None):
        found.append(run_dir / FINAL)
    if not found:
        raise InputError(
            f"{run_dir}: no complete checkpoint-<step>/ or final/ folder; is it a relevance-lens train output?"
        )
    return found


def train_done(run_dir: str | Path) -> bool:
    """Whether a run finished: ``final/`` with its head, and the summary written after it."""
    run_dir = Path(run_dir)
    return (run_dir / FINAL / HEAD_FILE).is_file() and (run_dir / SUMMARY).is_file()
