"""Studies: a tiny grid run end to end, killed and resumed, sharded and merged; the packaged
studies resolve without weights or network; bad study files fail before any training."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import torch

from dissectfix import one_thread  # noqa: F401  (autouse: one thread, float sums in one fixed order)
from relevance_lens import study as st
from relevance_lens.dissect.evalset import build_evalset
from relevance_lens.errors import InputError
from relevance_lens.model.backbone import model_info
from relevance_lens.store import Store, merge_stores
from relevance_lens.train.rundir import complete_checkpoints
from studyfix import (  # noqa: F401  (no_weights_no_network: a fixture)
    dry_run,
    fake_dataset,
    no_weights_no_network,
    run_study,
    sorted_rows,
    study_files,
    study_toml,
)
from tiny import FAMILIES, save_tiny, tiny_model

STUDY = study_toml(
    "tiny",
    ranks=(1, 2),
    targets=("mha", "mlp"),
    max_steps=24,
    save_steps=(3, 6),
    baseline=(6, (3,)),
    analyses="""[analyses.checkpoints]

[analyses.ablate]
sweeps = ["drop-layer", "roles", "drop-layer-role"]
permutations = {permutations}

[analyses.weights]
vs_rank = 2

[analyses.lens]
adapter_off = true
""",
)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Writes study files for the tiny grid: ``make(name, **format overrides) -> path``."""
    return study_files(tmp_path_factory.mktemp("study"), "tiny.toml", STUDY, permutations=200)


@pytest.fixture(scope="module")
def reference(tiny_study, tmp_path_factory):
    """The tiny grid run once, uninterrupted."""
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("reference")
    started = time.perf_counter()
    store, counts = run_study(tiny_study(), work)
    return {"work": work, "store": store, "counts": counts, "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------- the grid


@pytest.mark.slow
def test_grid_cells_rows_and_rerun_skips(reference, tiny_study):
    assert reference["counts"]["cells"] == 23  # 5 runs; 4 analyses per LoRA run, 2 for the head-only run
    rows = sorted_rows(reference["store"])
    analyses = {r[5] for r in rows}
    assert {
        "train",
        "checkpoints",
        "ablate:drop-layer",
        "ablate:roles",
        "ablate:drop-layer-role",
        "weights",
        "subspace",
        "lens",
        "study",
    } <= analyses
    runs = sorted(p.name for p in (reference["work"] / "runs").iterdir() if p.is_dir())
    assert len(runs) == 5 and sum("-head-" in r for r in runs) == 1
    for run in runs:
        assert (reference["work"] / "runs" / run / "final" / "score_head.safetensors").is_file()
    # The train rows carry the exact config of each run.
    with closing(sqlite3.connect(reference["store"])) as conn:
        configs = [
            json.loads(c)
            for (c,) in conn.execute("SELECT config_json FROM results WHERE analysis='train' AND metric='steps'")
        ]
    assert sorted(c["train"]["rank"] for c in configs if c["train"]["targets"] != "none") == [1, 1, 2, 2]
    again = run_study(tiny_study(), reference["work"])[1]
    assert again["ran"] == 0 and again["skipped"] == 23
    assert sorted_rows(reference["store"]) == rows
    # Every cell ran whole in this process: each has its wall seconds, and they add up to less than the study took.
    store = Store(reference["store"])
    took = [st.measured_seconds(c, store) for c in st.expand(st.load_study(tiny_study()))]
    assert all(t is not None and t > 0 for t in took) and sum(took) < reference["seconds"]


@pytest.mark.slow
def test_report_of_a_real_study_has_every_section(reference, tmp_path):
    from relevance_lens.report.page import write_report

    text = write_report(reference["store"], tmp_path / "report.html").read_text()
    for section in (
        "checkpoints",
        "ranks",
        "targets",
        "layer-heatmap",
        "layer-sweeps",
        "roles",
        "weights",
        "lens",
        "configs",
    ):
        body = text.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
        assert 'class="note"' not in body, section
    assert text.count("data:image/png;base64,") >= 8


@pytest.mark.slow
def test_changed_setting_makes_cells_pending(reference, tiny_study):
    changed = st.load_study(tiny_study("changed.toml", permutations=300))
    store = Store(reference["store"])
    states = {(c.kind, c.what, c.run): st.status(c, reference["work"], store) for c in st.expand(changed)}
    pending = {k for k, s in states.items() if s != "done"}
    assert pending and all(what.startswith("ablate") for _, what, _ in pending)
    assert sum(1 for k in states if k[0] == "train" and states[k] == "done") == 5
    # A training setting changes the run (a new folder), so its cells are all pending.
    lr = st.load_study(tiny_study("lr.toml", text=STUDY.replace("lr = 1e-2", "lr = 2e-2")))
    lora_trains = [c for c in st.expand(lr) if c.kind == "train" and "-head-" not in c.run]
    assert all(st.status(c, reference["work"], store) == "pending" for c in lora_trains)


@pytest.mark.slow
def test_added_metric_is_computed_not_skipped(reference, tiny_study, tmp_path):
    import shutil

    work = tmp_path / "copy"
    shutil.copytree(reference["work"], work)
    only_checkpoints = STUDY[: STUDY.index("[analyses.ablate]")] + '[scoring]\ndtype = "fp32"\ndevice = "cpu"\n'
    text = only_checkpoints.replace("depth = 4", 'depth = 4\nmetrics = ["nDCG@10", "RR@10", "P@1"]')
    store, counts = run_study(tiny_study("p1.toml", text=text), work)
    assert counts["ran"] == 5 and counts["skipped"] == 5  # trainings done; the checkpoint analyses rerun
    with closing(sqlite3.connect(store)) as conn:
        runs = {
            r
            for (r,) in conn.execute(
                "SELECT DISTINCT run FROM results WHERE analysis='checkpoints' AND metric='P@1' AND checkpoint='final'"
            )
        }
    assert len(runs) == 5


def _mid_training(work: Path, store: Path) -> bool:
    """Some results are stored and some run is between its first checkpoint and final/."""
    if not store.is_file():
        return False
    try:
        with closing(sqlite3.connect(store, timeout=0.1)) as conn:
            if not conn.execute("SELECT 1 FROM results WHERE analysis='checkpoints' LIMIT 1").fetchone():
                return False
    except sqlite3.Error:
        return False
    runs = work / "runs"
    return (
        any(complete_checkpoints(r) and not (r / "final").exists() for r in runs.iterdir() if r.is_dir())
        if runs.is_dir()
        else False
    )


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(reference, tiny_study, tmp_path):
    study_path = tiny_study()
    work = tmp_path / "killed"
    store = work / "results.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "relevance_lens", "study", "run", str(study_path), "--workdir", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not _mid_training(work, store):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the study finished before it could be killed"
    unfinished = [r.name for r in (work / "runs").iterdir() if r.is_dir() and not (r / "final").exists()]
    assert unfinished, "expected a run killed mid-training"
    counts = run_study(study_path, work)[1]
    assert counts["skipped"] >= 1 and counts["ran"] >= 1
    assert sorted_rows(store) == sorted_rows(reference["store"])
    # A run resumed from a checkpoint gets no timing: its seconds would be a part of its cost.
    trains = {c.run: c for c in st.expand(st.load_study(study_path)) if c.kind == "train"}
    assert all(st.measured_seconds(trains[run], Store(store)) is None for run in unfinished)


@pytest.mark.slow
def test_shards_then_merge_equal_one_run(reference, tiny_study, tmp_path):
    study_path = tiny_study()
    cells = st.expand(st.load_study(study_path))
    # A shard count that splits this grid's runs (balanced shards: 2 does whenever there are two runs).
    n = next(n for n in (2, 3, 4, 5) if len({st.shard_of(c, n, cells) for c in cells}) > 1)
    stores = []
    for i in range(n):  # separate work folders, as on separate machines
        store, counts = run_study(study_path, tmp_path / f"shard{i}", shard=(i, n))
        if counts["cells"]:
            stores.append(store)
    assert len(stores) > 1
    assert all(0 < len(sorted_rows(s)) < len(sorted_rows(reference["store"])) for s in stores)
    merged = tmp_path / "merged.sqlite"
    merge_stores(merged, stores)
    assert sorted_rows(merged) == sorted_rows(reference["store"])


def test_shard_assignment_is_stable_and_keeps_runs_together(tiny_study):
    cells = st.expand(st.load_study(tiny_study()))
    for n in (2, 3):
        parts = [st.select(cells, (i, n)) for i in range(n)]
        owned = [[c for c in part if st.shard_of(c, n, cells) == i] for i, part in enumerate(parts)]
        assert sorted(c.id for part in owned for c in part) == sorted(c.id for c in cells)
        for i, part in enumerate(parts):
            trained = {c.run for c in part if c.kind == "train"}
            assert all(set(c.needs) <= trained for c in part if c.kind == "analyze")
            assert all(st.shard_of(c, n, cells) == i for c in part if c.kind == "analyze")
    assert [c.id for c in st.select(cells, (0, 2))] == [
        c.id for c in st.select(st.expand(st.load_study(tiny_study())), (0, 2))
    ]


@pytest.mark.parametrize("text", ["1", "2/2", "-1/2", "a/b", "0/0"])
def test_bad_shard(text):
    with pytest.raises(InputError, match="--shard"):
        st.parse_shard(text)


# ---------------------------------------------------------------- dry runs, no weights


@pytest.mark.usefixtures("no_weights_no_network")
def test_paper_dry_run_resolves_every_cell(tmp_path):
    listed = dry_run("paper", tmp_path / "w", tmp_path / "out.txt")
    out = (tmp_path / "out.txt").read_text()
    trains = [c for c, _ in listed if c.kind == "train"]
    assert len(trains) == 3 * 4 * 3 + 3  # models x ranks x targets, + a head-only run per model
    assert {c.config["train"]["targets"] for c in trains} == {"mha", "mlp", "all", "none"}
    assert all(c.config["train"]["queries_per_device"] * c.config["train"]["grad_accum"] == 128 for c in trains)
    assert all(s == "pending" for _, s in listed)
    for name, family, size in (
        ("mistralai/Mistral-7B-v0.1", "mistral", 6.98),
        ("meta-llama/Llama-3.1-8B", "llama", 6.98),
        ("EleutherAI/pythia-6.9b", "gpt_neox", 6.44),
    ):
        assert (
            f"model {name}: family {family}, 32 layers, hidden 4096, {size:.2f} B block weights "
            "(from the built-in table of hub ids)" in out
        )
    assert "built-in table of hub ids" in out
    ablate = [c for c, _ in listed if c.what == "ablate on dl19" and c.run.startswith("pythia-6.9b-r8-mlp")]
    # Pythia's MLP is up + down (no gate): 32 drop-layer + 28 windows + 4 role + 64 layer-role variants,
    # + full and base per sweep.
    assert ablate and ablate[0].cost.startswith("136 passes")


PAPER_CONFIGS = {
    "mistralai/Mistral-7B-v0.1": "mistral-7b-v0.1.json",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b.json",
    "EleutherAI/pythia-6.9b": "pythia-6.9b.json",
}


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_block_weights_of_the_known_models_count_the_real_blocks(name):
    """The built-in table's shape gives the matmul weights a model built from the real config has."""
    from transformers import AutoConfig, AutoModel

    from relevance_lens.model.backbone import KNOWN_MODELS, block_params
    from relevance_lens.model.roles import architecture_of, blocks

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / PAPER_CONFIGS[name]
    config = AutoConfig.for_model(**json.loads(path.read_text()))
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    linear = sum(
        m.weight.numel()
        for block in blocks(model, architecture_of(config))
        for m in block.modules()
        if isinstance(m, torch.nn.Linear)
    )
    assert block_params(KNOWN_MODELS[name]) == linear
    assert model_info(name).block_params == linear


@pytest.mark.parametrize("family", FAMILIES)
def test_block_weights_of_a_local_model_folder(family, tmp_path):
    """A folder's config.json gives the matmul weights of its blocks (GPT-2's Conv1D included)."""
    from transformers.pytorch_utils import Conv1D

    from relevance_lens.model.roles import architecture_of, blocks

    folder = save_tiny(family, tmp_path / family)
    model = tiny_model(family)
    matmuls = (torch.nn.Linear, Conv1D)
    weights = sum(
        m.weight.numel()
        for block in blocks(model, architecture_of(model.config))
        for m in block.modules()
        if isinstance(m, matmuls)
    )
    assert model_info(str(folder)).block_params == weights


def test_paper_dry_run_estimates_gpu_hours(tmp_path):
    from relevance_lens.study.plan import GpuRate

    listed = dry_run("paper", tmp_path / "w", tmp_path / "out.txt")
    out = (tmp_path / "out.txt").read_text()
    train = next(c for c, _ in listed if c.kind == "train" and c.run.startswith("mistral-7b-r8-all"))
    n = model_info("mistralai/Mistral-7B-v0.1").block_params
    # 1600 steps x 128 queries x 16 passages of <= 196 tokens; forward, input gradients, recompute.
    tokens = 1600 * 128 * 16 * 196
    assert train.flops == pytest.approx(3 * tokens * (2 * n + 2 * 32 * 4096 * 196))
    head = next(c for c, _ in listed if c.kind == "train" and "-head-" in c.run)
    assert head.flops == pytest.approx(400 * 128 * 16 * 196 * (2 * n + 2 * 32 * 4096 * 196))  # forward only
    hours = GpuRate().hours(sum(c.flops for c, _ in listed))
    assert f"estimated GPU-hours of the {len(listed)} cells not done: {hours:,.3g}" in out
    assert "at 989 TFLOP/s x 40% utilisation" in out and "unknown size" not in out
    assert 100 < hours < 10_000  # 39 LoRA runs of 7B models on 2 x 10^8 tokens each: hundreds of hours
    assert GpuRate(tflops=989 / 2).hours(train.flops) == pytest.approx(2 * GpuRate().hours(train.flops))
    # The GPU-hours column: each cell's FLOPs / (989 TFLOP/s x 0.4 x 3600 s), as printed (2 significant digits
    # below 10 h, whole hours above), and the printed cells add up to the printed total within their rounding.
    rows = [[part.strip() for part in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    assert [(int(r[0]), r[1], r[2]) for r in rows] == [(i, c.run, c.what) for i, (c, _) in enumerate(listed, 1)]
    printed, slack = 0.0, 0.0
    for (cell, _), row in zip(listed, rows):
        shown = row[4]
        if cell.flops == 0:  # reads weights, no forward pass
            assert shown == "-", row
            continue
        value = float(shown.replace(",", ""))
        half_unit = 0.5 * 10.0 ** -(len(shown.split(".")[1]) if "." in shown else 0)
        exact = cell.flops / (989e12 * 0.4 * 3600)
        assert abs(value - exact) <= half_unit * (1 + 1e-9), (row, exact)
        if cell.kind == "train":
            assert value > 0, row
        printed, slack = printed + value, slack + half_unit
    total = float(
        out.split(f"estimated GPU-hours of the {len(listed)} cells not done: ")[1].split()[0].replace(",", "")
    )
    assert abs(printed - total) <= slack + 0.5 * 10 ** (math.floor(math.log10(total)) - 2), (printed, total)


@pytest.mark.usefixtures("no_weights_no_network")
def test_dry_run_shows_what_each_timed_cell_took(tmp_path):
    cells = st.expand(st.load_study("demo"))
    train, checkpoints, ablate = (
        next(c for c in cells if c.kind == "train" and "-head-" not in c.run),
        next(c for c in cells if c.what == "checkpoints on dev" and "-head-" not in c.run),
        next(c for c in cells if c.what.startswith("ablate")),
    )
    store = Store(tmp_path / "w" / "r.sqlite")
    done = {"analysis": "study", "metric": "done", "value": 1.0}
    store.append(
        [
            st.timing_row(train.run, "train", train.config, 292.4),
            {**done, "run": checkpoints.run, "variant": st.marker(checkpoints), "config_json": checkpoints.config},
            st.timing_row(checkpoints.run, st.marker(checkpoints), checkpoints.config, 301.6),
            # Another cell's config under the same marker: not this cell's measure.
            st.timing_row(ablate.run, st.marker(ablate), {**ablate.config, "eval": None}, 5.0),
        ]
    )
    store.append([st.timing_row(checkpoints.run, st.marker(checkpoints), checkpoints.config, 250.0)])  # a rerun
    assert st.measured_seconds(train, store) == 292.4
    assert st.measured_seconds(checkpoints, store) == 250.0  # the latest measure
    assert st.measured_seconds(ablate, store) is None
    row = store.rows(run=train.run, analysis="study", metric="seconds")[0]
    recorded = json.loads(row["config_json"])["machine"]
    assert recorded["processor"] and recorded["threads"] == torch.get_num_threads() and "load_average" in recorded

    listed = dry_run("demo", tmp_path / "w", tmp_path / "out.txt")
    out = (tmp_path / "out.txt").read_text()
    rows = [[part.strip() for part in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    took = {(r[1], r[2]): r[-1] for r in rows}
    assert took[(train.run, train.what)] == "292 s" and took[(checkpoints.run, checkpoints.what)] == "250 s"
    assert took[(ablate.run, ablate.what)] == "-"
    assert sum(v != "-" for v in took.values()) == 2 and len(took) == len(listed)
    # The checkpoints cell is done (its marker); the training cell is not (no run folder), yet its measure shows.
    assert "took: 2 cells timed, 9.0 min in all" in out and "0 done cells untimed" in out


@pytest.mark.parametrize("tflops, mfu, message", [(0, 0.4, "--gpu-tflops 0"), (989, 1.5, "--mfu 1.5")])
def test_bad_gpu_rate(tflops, mfu, message):
    from relevance_lens.study.plan import GpuRate

    with pytest.raises(InputError, match=message):
        GpuRate(tflops, mfu)


@pytest.mark.usefixtures("no_weights_no_network")
def test_embedded_studies_dry_run_without_dequantizing(tmp_path):
    for name, runs in (("demo", 2), ("embedded-grid", 2 * 4 * 3 + 2)):
        listed = dry_run(name, tmp_path / name)
        assert sum(c.kind == "train" for c, _ in listed) == runs
    demo = st.expand(st.load_study("demo"))
    assert [c.what for c in demo if c.kind == "analyze" and "-head-" not in c.run] == [
        "checkpoints on dev",
        "ablate on dev20",
        "weights",
        "lens on dev20",
    ]


def test_hub_model_family_from_the_study_file():
    info = model_info("acme/unknown-7b", family="mistral")
    assert (info.family, info.source) == ("mistral", "study file (family =)")


# ---------------------------------------------------------------- bad study files


@pytest.mark.parametrize(
    "edit,message",
    [
        (("[study]", "[study]\nmodles = []"), r"\[study\]: unknown key\(s\) modles"),
        (("[train]", "[train]\nrnak = 4"), r"unknown training setting\(s\) rnak"),
        (("[train]", "[train]\nrank = 4"), "rank is set by the study, not here; use ranks"),
        (("ranks = [1, 2]", "ranks = [0, 2]"), "rank 0 is impossible"),
        (("ranks = [1, 2]", "ranks = [4096, 2]"), "rank 4096 is impossible for hidden size 32"),
        (('targets = ["mha", "mlp"]', 'targets = ["mha", "attention"]'), "unknown role or preset 'attention'"),
        (("models = [", 'models = ["acme/unknown-7b", '), "acme/unknown-7b: unknown model family"),
        (("models = [", 'models = [{name = "acme/x-7b", family = "bogus"}, '), "family 'bogus' has no role table"),
        (("sweeps = [", 'sweeps = ["drop-everything", '), r"unknown sweep\(s\) drop-everything"),
        (("[analyses.lens]", '[analyses.lens]\nevals = ["dev"]'), "eval set 'dev' is not defined"),
        (("[scoring]", "[scoring]\nbatch_tokens = 4"), "batch_tokens must be >= 16"),
        (("depth = 4", 'depth = 4\nsplit = "dev"'), "give exactly one of split"),
        (("[study]", "[stuff]\nx = 1\n[study]"), r"unknown table\(s\) stuff"),
    ],
)
def test_bad_study_fails_before_training(tiny_study, tmp_path, edit, message):
    text = STUDY.replace(*edit, 1)
    assert text != STUDY
    path = tiny_study("bad.toml", text=text)
    with pytest.raises(InputError, match=message):
        run_study(path, tmp_path / "w")
    assert not (tmp_path / "w" / "runs").exists()


def test_cli_error_is_one_line_with_exit_code_2(tiny_study, tmp_path):
    path = tiny_study("bad-cli.toml", text=STUDY.replace("[train]", "[train]\nrnak = 4"))
    result = subprocess.run(
        [sys.executable, "-m", "relevance_lens", "study", "run", str(path), "--workdir", str(tmp_path / "w")],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "[train]: unknown training setting(s) rnak" in lines[0]
    assert not (tmp_path / "w").exists()


@pytest.mark.usefixtures("no_weights_no_network")
def test_cli_dry_run_and_merge_errors(tmp_path):
    from typer.testing import CliRunner

    from relevance_lens.cli import app

    result = CliRunner().invoke(
        app, ["study", "run", "paper", "--dry-run", "--workdir", str(tmp_path / "w"), "--shard", "1/3"]
    )
    assert result.exit_code == 0, result.output
    assert "shard 1/3" in result.output and "training runs" in result.output
    assert not (tmp_path / "w").exists()  # a dry run writes nothing
    result = CliRunner().invoke(app, ["study", "merge", str(tmp_path / "out.sqlite"), str(tmp_path / "missing.sqlite")])
    assert isinstance(result.exception, InputError) and "no such results store" in str(result.exception)


def test_ir_datasets_eval_set_fetches_only_the_reranked_passages(monkeypatch):
    fetched = fake_dataset(
        monkeypatch,
        queries=[("1", "judged query"), ("2", "unjudged query")],
        qrels=[("1", "d3", 2)],
        scoreddocs=[("1", f"d{i}", 10.0 - i) for i in range(6)] + [("2", "d9", 1.0)],
    )
    evalset = build_evalset(
        {"name": "dl", "ir_datasets": "msmarco-passage/trec-dl-2019", "depth": 4, "max_queries": None}
    )
    assert evalset.name == "dl" and evalset.query_ids == ["1"]
    assert sorted(fetched) == ["d0", "d1", "d2", "d3"]
    assert (
        evalset.pairs() == [("1", "d0"), ("1", "d1"), ("1", "d2"), ("1", "d3")]
        and evalset.corpus["d3"].text == "text of d3"
    )
