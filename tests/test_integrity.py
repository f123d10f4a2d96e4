"""Integrity: checkpoint manifests name corrupted files on load, resume and analysis; resume falls
back to the last intact checkpoint; a corrupted results store is refused for writing; every
output follows the umask."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from relevance_lens.errors import InputError
from relevance_lens.model.lora import LoraSettings, attach_lora
from relevance_lens.model.manifest import MANIFEST
from relevance_lens.model.reranker import CONFIG_FILE, HEAD_FILE
from relevance_lens.store import Store
from relevance_lens.train.config import load_config
from relevance_lens.train.rundir import complete_checkpoints, run_checkpoints
from relevance_lens.train.trainer import train
from tiny import tiny_reranker, tiny_tokenizer
from trainfix import tiny_collection, tiny_train_settings

ADAPTER = "adapter_model.safetensors"


@contextmanager
def umask(mask: int):
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def flip_last_byte(path: Path) -> None:
    """Corrupt a file so that it still parses: the last byte is tensor data in a safetensors file."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def saved_adapter(folder: Path) -> Path:
    reranker = tiny_reranker("llama")
    attach_lora(reranker, LoraSettings(rank=2, targets="mha"))
    reranker.save(folder)
    return folder


def test_a_saved_folder_lists_every_file_and_a_changed_byte_is_named_on_load(tmp_path):
    folder = saved_adapter(tmp_path / "adapter")
    files = json.loads((folder / MANIFEST).read_text())["files"]
    on_disk = {p.name for p in folder.iterdir() if p.name != MANIFEST}
    assert set(files) == on_disk and {ADAPTER, HEAD_FILE, CONFIG_FILE} <= on_disk
    for name, entry in files.items():
        data = (folder / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    tiny_reranker("llama").load_adapter(folder)  # intact: loads
    flip_last_byte(folder / ADAPTER)
    load_file(folder / ADAPTER)  # the corruption still parses: only the manifest can tell
    with pytest.raises(InputError, match=rf"{ADAPTER}: sha256 differs from {MANIFEST}") as info:
        tiny_reranker("llama").load_adapter(folder)
    assert "\n" not in str(info.value)


def test_an_interrupted_save_is_refused_but_a_folder_from_before_manifests_loads(tmp_path):
    folder = saved_adapter(tmp_path / "adapter")
    (folder / MANIFEST).unlink()  # reranker.json still promises it: the save never finished
    with pytest.raises(InputError, match="save was interrupted"):
        tiny_reranker("llama").load_adapter(folder)
    # Saved before manifests existed: no promise in reranker.json, loaded unverified (the head check stays).
    record = json.loads((folder / CONFIG_FILE).read_text())
    del record["manifest"]
    (folder / CONFIG_FILE).write_text(json.dumps(record))
    reranker = tiny_reranker("llama")
    reranker.load_adapter(folder)
    assert torch.equal(reranker.score.weight, load_file(folder / HEAD_FILE)["weight"])


# ---------------------------------------------------------------- checkpoints of a training run


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return tiny_collection(tmp_path_factory.mktemp("collection"))


def tiny_run(collection, output: Path, **overrides):
    return load_config(
        None, **tiny_train_settings(collection, output, **{**{"max_steps": 6, "save_steps": [2, 4]}, **overrides})
    )


@pytest.fixture(scope="module")
def straight_run(collection, tmp_path_factory):
    return train(tiny_run(collection, tmp_path_factory.mktemp("straight") / "run"), progress=False)


def test_checkpoints_carry_manifests_and_analysis_names_a_corrupted_file(straight_run, tmp_path):
    run_dir = shutil.copytree(straight_run, tmp_path / "run")
    for folder in [run_dir / "checkpoint-2", run_dir / "final"]:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
        assert {ADAPTER, HEAD_FILE}.issubset(listed)
    # The checkpoint's manifest follows the Trainer's own files, its state written last among them.
    assert {"trainer_state.json", "optimizer.pt"}.issubset(
        json.loads((run_dir / "checkpoint-2" / MANIFEST).read_text())["files"]
    )
    assert [p.name for p in run_checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "final"]

    flip_last_byte(run_dir / "checkpoint-4" / "optimizer.pt")
    with pytest.raises(InputError, match=r"checkpoint-4/optimizer\.pt: sha256 differs"):
        run_checkpoints(run_dir)  # `analyze checkpoints` lists the run this way
    with pytest.raises(InputError, match=r"checkpoint-4/optimizer\.pt"):
        complete_checkpoints(run_dir)
    skipped: list[str] = []
    assert [s for s, _ in complete_checkpoints(run_dir, on_corrupt=skipped.append)] == [2, 6]
    assert len(skipped) == 1 and "checkpoint-4/optimizer.pt" in skipped[0]

    (run_dir / "checkpoint-6" / MANIFEST).unlink()  # promised but missing: cut short, never complete
    assert [s for s, _ in complete_checkpoints(run_dir, on_corrupt=skipped.append)] == [2]

    shutil.rmtree(run_dir / "checkpoint-4")
    flip_last_byte(run_dir / "final" / HEAD_FILE)
    with pytest.raises(InputError, match=rf"final/{HEAD_FILE}: sha256 differs"):
        run_checkpoints(run_dir)


def test_resume_falls_back_past_a_corrupted_checkpoint_and_says_so(collection, straight_run, tmp_path, caplog):
    run_dir = shutil.copytree(straight_run, tmp_path / "run")
    # As if killed after checkpoint-4, whose adapter then rotted on disk.
    for name in ["final", "checkpoint-6"]:
        shutil.rmtree(run_dir / name)
    (run_dir / "train_summary.json").unlink()
    flip_last_byte(run_dir / "checkpoint-4" / ADAPTER)

    with caplog.at_level(logging.WARNING, logger="relevance_lens.train.trainer"):
        train(tiny_run(collection, run_dir), resume=True, progress=False)
    warned = [r.getMessage() for r in caplog.records if "--resume" in r.getMessage()]
    assert len(warned) == 1 and "checkpoint-4/adapter_model.safetensors" in warned[0]
    assert "resuming from checkpoint-2" in warned[0] and "\n" not in warned[0]
    # The rewritten checkpoint-4 is intact again, and the run ends where the uninterrupted one did.
    assert [s for s, _ in complete_checkpoints(run_dir)] == [2, 4, 6]
    for name in [ADAPTER, HEAD_FILE]:
        resumed, straight = load_file(run_dir / "final" / name), load_file(straight_run / "final" / name)
        assert all(torch.allclose(resumed[k], straight[k], atol=1e-6) for k in straight)


def test_a_study_sees_past_a_corrupted_checkpoint_so_its_training_can_resume(straight_run, tmp_path):
    from relevance_lens.study.plan import RUNS, Cell, status

    run_dir = shutil.copytree(straight_run, tmp_path / RUNS / "r")
    shutil.rmtree(run_dir / "final")
    flip_last_byte(run_dir / "checkpoint-6" / HEAD_FILE)
    assert status(Cell(kind="train", run="r", config={}), tmp_path, None) == "partial (checkpoint-4)"


# ---------------------------------------------------------------- the results store


def test_a_corrupted_store_is_refused_when_opened_for_writing(tmp_path):
    path = tmp_path / "results.sqlite"
    Store(path).append(
        [
            {"run": "r", "analysis": "a", "metric": f"m{i}", "value": i, "config_json": {"pad": "x" * 500}}
            for i in range(300)
        ]
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated mid-file
    with pytest.raises(InputError, match=rf"results store {path}: corrupted") as info:
        Store(path).append([{"run": "r", "analysis": "a", "metric": "new", "value": 1.0}])
    assert "\n" not in str(info.value)

    path.write_bytes(b"not a database, just bytes " * 64)
    with pytest.raises(InputError, match="corrupted or not a relevance-lens results store"):
        Store(path)

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE results (name TEXT)")
    with pytest.raises(InputError, match="results table lacks run"):
        Store(other)


# ---------------------------------------------------------------- permissions


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_saved_adapters_follow_the_umask_like_the_json_beside_them(tmp_path, mask):
    with umask(mask):
        folder = saved_adapter(tmp_path / "adapter")
    assert modes(folder) == {name: 0o666 & ~mask for name in modes(folder)}


def test_the_dequantized_model_cache_follows_the_umask(tmp_path, monkeypatch):
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    from relevance_lens.model import backbone

    def fake_gguf_load(*args, **kwargs):  # what dequantizing a GGUF returns, without a GGUF file
        torch.manual_seed(0)
        config = LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
        return LlamaForCausalLM(config)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_gguf_load)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny_tokenizer())
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with umask(0o027):
        backbone._dequantize_to([tmp_path / "m.gguf"], "m.gguf", tmp_path / "cache" / "key")
    found = modes(tmp_path / "cache" / "key")
    assert any(name.endswith(".safetensors") for name in found)
    assert found == {name: 0o640 for name in found}


def tree_modes(root: Path) -> dict[str, int]:
    """Every file and folder under ``root`` (``root`` too), by path relative to its parent."""
    return {
        str(p.relative_to(root.parent)) + ("/" if p.is_dir() else ""): stat.S_IMODE(p.stat().st_mode)
        for p in [root, *root.rglob("*")]
    }


def follows(found: dict[str, int], mask: int) -> dict[str, int]:
    """What ``found`` would be if every entry followed ``mask`` as open() and mkdir() do."""
    return {name: (0o777 if name.endswith("/") else 0o666) & ~mask for name in found}


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=oct)
def test_runs_the_store_and_the_report_follow_the_umask(collection, tmp_path, mask):
    from typer.testing import CliRunner

    from relevance_lens.cli import app
    from relevance_lens.report.page import write_report

    out = tmp_path / "out"
    inputs = ["--queries", collection["queries"], "--corpus", collection["corpus"]]
    with umask(mask):
        bm25 = CliRunner().invoke(app, ["bm25", *inputs, "--output", str(out / "bm25.trec"), "--depth", "3"])
        assert bm25.exit_code == 0, bm25.output
        rerank = ["rerank", "--model", collection["model"], *inputs, "--run", str(out / "bm25.trec")]
        rerank += ["--output", str(out / "rr.trec"), "--depth", "2", "--dtype", "fp32"]
        reranked = CliRunner().invoke(app, rerank)
        assert reranked.exit_code == 0, reranked.output
        Store(out / "results.sqlite").append([{"run": "r", "analysis": "train", "metric": "steps", "value": 2}])
        write_report(out / "results.sqlite", out / "report.html")
    found = tree_modes(out)
    assert {"out/bm25.trec", "out/rr.trec", "out/results.sqlite", "out/report.html"} <= set(found)
    assert found == follows(found, mask)


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=oct)
def test_a_training_run_and_its_checkpoints_follow_the_umask(collection, tmp_path, mask):
    with umask(mask):
        run_dir = train(tiny_run(collection, tmp_path / "run", max_steps=2, save_steps=[1]), progress=False)
    found = tree_modes(run_dir)
    checkpoint = {name for name in found if name.startswith("run/checkpoint-1/")}
    # The Trainer's own files (optimizer, scheduler, RNG state, arguments) as well as ours.
    assert {f"run/checkpoint-1/{n}" for n in (ADAPTER, HEAD_FILE, MANIFEST, "optimizer.pt", "trainer_state.json")} <= (
        checkpoint
    )
    assert found == follows(found, mask)
    lock = tmp_path / ".run.lock"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o666 & ~mask
