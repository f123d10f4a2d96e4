"""Clean output: the console shows the tool's own progress and tables, not other libraries' bars,
raw log dicts or warnings (relevance_lens.quiet, relevance_lens.train.progress)."""

import os
import re
import subprocess
import sys
import warnings

import pytest

from relevance_lens import quiet
from relevance_lens.train.progress import describe
from trainfix import tiny_collection

#: What must never reach the console: the Trainer's printed log dicts, transformers' and hub's tqdm
#: bars, Python's warning lines from other libraries.
NOISE = {
    "raw log dict": re.compile(r"\{'(loss|train_runtime|grad_norm|learning_rate)'"),
    "tqdm bar": re.compile(r"\d+it/s\]|it/s\]|Loading weights|Writing model shards"),
    "library warning": re.compile(r"(Future|Deprecation|User)Warning"),
}


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "relevance_lens", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quiet")
    paths = tiny_collection(folder)
    run = folder / "run"
    (folder / "train.toml").write_text("logging_steps = 1\n")  # a loss on the bar from the first step
    args = ["train", "--config", folder / "train.toml", "--model", paths["model"], "--output", run, "--data", "files"]
    for key in ("queries", "qrels", "corpus"):
        args += [f"--{key}", paths[key]]
    args += ["--negatives-run", paths["negatives_run"], "--group-size", 4, "--queries-per-device", 2]
    args += ["--max-steps", 3, "--save-steps", "1,2", "--max-length", 64, "--precision", "fp32"]
    args += ["--eval-split", "none", "--rank", 2]
    return paths, run, cli(*args)


def _noise(text: str) -> list[str]:
    return [f"{name}: {m.group(0)!r}" for name, pattern in NOISE.items() for m in [pattern.search(text)] if m]


def test_training_console_has_only_the_tools_output(trained):
    _, run, result = trained
    assert result.returncode == 0, result.stderr
    assert _noise(result.stdout + result.stderr) == []
    assert re.search(r"training .* 3/3 .*loss \d\.\d{3}.* s/step", result.stderr), result.stderr
    # The log entries the console no longer prints are all kept in the run's summary.
    assert (run / "train_summary.json").is_file() and '"loss"' in (run / "train_summary.json").read_text()


@pytest.mark.parametrize("analysis", ["weights", "checkpoints", "ablate", "lens"])
def test_analysis_console_has_only_the_tools_output(trained, tmp_path, analysis):
    paths, run, _ = trained
    target = run if analysis in ("weights", "checkpoints") else run / "final"
    args = ["analyze", analysis, target, "--store", tmp_path / "store.sqlite"]
    if analysis != "weights":
        args += ["--queries", paths["queries"], "--qrels", paths["qrels"]]
        args += ["--corpus", paths["corpus"], "--run", paths["negatives_run"], "--depth", 4, "--dtype", "fp32"]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert _noise(result.stdout + result.stderr) == []


def test_library_warnings_go_to_the_log_and_ours_stay_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    monkeypatch.setitem(quiet._state, "installed", False)
    monkeypatch.delenv(quiet.LOG_ENV, raising=False)
    quiet.quiet_libraries()
    log = tmp_path / "logs" / "libraries.log"

    class OurWarning(UserWarning):
        __module__ = "relevance_lens.model.reranker"

    with quiet.library_warnings_to(log):
        warnings.showwarning(FutureWarning("`x` is deprecated"), FutureWarning, "/site-packages/transformers/a.py", 3)
        warnings.showwarning(OurWarning("--adapter A: loaded anyway"), OurWarning, "/x/relevance_lens/y.py", 9)
    warnings.showwarning(FutureWarning("dropped"), FutureWarning, "/site-packages/peft/b.py", 4)
    err = capsys.readouterr().err
    assert err == "warning: --adapter A: loaded anyway\n"
    assert "FutureWarning: `x` is deprecated" in log.read_text() and "dropped" not in log.read_text()


def test_the_bar_text_reads_the_trainers_log_entry():
    assert describe({"loss": "2.0794", "grad_norm": 0.51, "learning_rate": 1e-3}) == "loss 2.079 · grad norm 0.51"
    assert describe({"train_runtime": 8.3}) == ""


def test_a_console_on_a_file_keeps_wide_tables(monkeypatch):
    import io

    from rich.table import Table

    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buffer)
    monkeypatch.delenv("COLUMNS", raising=False)
    out = quiet.console()
    table = Table("run", "checkpoint", "nDCG@10", "RR@10", "p")
    table.add_row("smollm2-135m-r8-all-s42-9576cf-and-a-long-name", "checkpoint-50", "0.6488", "0.5949", "0.148")
    out.print(table)
    lines = buffer.getvalue().splitlines()
    assert any("smollm2-135m-r8-all-s42-9576cf-and-a-long-name" in line for line in lines), "cut at 80 columns"
    assert max(map(len, lines)) > 80


@pytest.mark.parametrize(
    ("args", "message"), [(["analyze", "nosuch"], "No such command"), (["bm25", "--bogus"], "No such option")]
)
def test_a_usage_error_is_a_message_not_a_traceback(args, message):
    result = cli(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
