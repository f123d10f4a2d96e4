"""Training progress as one rich bar with the loss and the rate, in place of the Trainer's printed dicts.

The Trainer prints each log entry as a raw ``{'loss': '2.073', ...}`` dict (its PrinterCallback,
or tqdm's ``write``); the entries stay in ``train_summary.json`` and TensorBoard, and the console
shows this bar instead: step, loss (the last logged), grad norm, seconds per step, time left.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def quiet_trainer(trainer, progress: bool, console: Console | None = None) -> None:
    """Take the Trainer's printing callbacks off ``trainer``; add the rich bar when ``progress``."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(_bar_callback(console or Console(stderr=True)))


def describe(logs: dict) -> str:
    """The bar's text for a Trainer log entry: loss and grad norm when present."""
    parts = []
    if "loss" in logs:
        parts.append(f"loss {float(logs['loss']):.3f}")
    if "grad_norm" in logs:
        parts.append(f"grad norm {float(logs['grad_norm']):.2f}")
    return " · ".join(parts)


def _bar_callback(console: Console):
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            self.bar = Progress(
                TextColumn("training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[logs]}"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self.bar.start()
            self.task = self.bar.add_task(
                "training", total=state.max_steps, completed=state.global_step, logs="", rate=""
            )
            self.started, self.first = time.perf_counter(), state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            if hasattr(self, "bar"):
                done = state.global_step - self.first
                rate = f"{(time.perf_counter() - self.started) / done:.1f} s/step" if done else ""
                self.bar.update(self.task, completed=state.global_step, rate=rate)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if hasattr(self, "bar") and logs and describe(logs):
                self.bar.update(self.task, logs=describe(logs))

        def on_train_end(self, args, state, control, **kwargs):
            if hasattr(self, "bar"):
                self.bar.stop()
                del self.bar

    return RichProgress()
