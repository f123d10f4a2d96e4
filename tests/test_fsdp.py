"""FSDP training: 2 sharded processes train the model 1 process does, and their checkpoints score like it.

accelerate runs FSDP only on accelerators (tests/cpu_fsdp.py has the line that decides it): here the
Trainer's FSDP2 path runs on CPU (gloo) through that launcher, and plain ``train`` refuses ``fsdp``
on CPU rather than silently training without sharding.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import test_train
from relevance_lens.data.formats import read_corpus, read_queries, read_run
from relevance_lens.errors import InputError
from relevance_lens.score.config import ScoreConfig, load_for_scoring
from relevance_lens.score.rerank import rerank
from relevance_lens.train.config import load_config
from relevance_lens.train.trainer import train
from trainfix import torchrun, write_toml

LAUNCHER = Path(__file__).with_name("cpu_fsdp.py")
# The tiny collection and training settings of test_train.py (its module-scoped fixture, used here too).
collection, _config = test_train.collection, test_train._config


def _scores(files: dict, adapter: Path) -> dict[tuple[str, str], float]:
    """Every candidate's score with ``adapter`` loaded as ``rerank --adapter ADAPTER --dtype fp32`` loads it."""
    config = ScoreConfig(depth=100, keep_tail=False, dtype="fp32", device="cpu")
    reranker = load_for_scoring(adapter=adapter, config=config)
    queries, corpus = read_queries(files["queries"]), read_corpus(files["corpus"])
    run = rerank(reranker, queries, corpus, read_run(files["negatives_run"]), config, progress=False)
    return {(qid, docid): score for qid, docs in run.items() for docid, score in docs.items()}


def _tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    return {
        f"{name}:{key}": tuple(value.shape)
        for name in ("adapter_model.safetensors", "score_head.safetensors")
        for key, value in load_file(folder / name).items()
    }


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs gloo")
def test_two_fsdp_processes_score_like_one_with_the_same_global_batch(collection, tmp_path):
    steps = dict(max_steps=8, save_steps=[4])
    one = train(
        load_config(None, **_config(collection, tmp_path / "one", queries_per_device=4, **steps)), progress=False
    )
    # The same global batch as 2 micro-batches in one process: only the order of float sums differs. How far that
    # moves the scores is this CPU's rounding noise, and sets the tolerance (as for the weights in test_train.py).
    accum = _config(collection, tmp_path / "accum", queries_per_device=2, grad_accum=2, **steps)
    accum = train(load_config(None, **accum), progress=False)
    settings = _config(collection, tmp_path / "x", queries_per_device=2, fsdp="full_shard", **steps)
    settings.pop("output")
    toml = write_toml(tmp_path / "train.toml", settings)
    command = torchrun(2, str(LAUNCHER), "train", "--config", str(toml), "--output", str(tmp_path / "two"))
    done = subprocess.run(command, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two"
    record = json.loads((two / "run.json").read_text())
    assert record["resolved"]["world_size"] == 2 and record["resolved"]["global_batch_queries"] == 4
    assert record["config"]["fsdp"] == "full_shard"
    assert (two / "checkpoint-4" / "pytorch_model_fsdp.bin").is_file()  # the Trainer's FSDP path wrote it
    # Complete tensors, not one process's shard (the head's single row would be on one process only).
    for step in ("checkpoint-4", "final"):
        assert _tensor_shapes(two / step) == _tensor_shapes(one / step), step

    a, b, c = (_scores(collection, run / "final") for run in (one, two, accum))
    assert a.keys() == b.keys() == c.keys() and len(a) > 10
    scale = max(abs(s) for s in a.values())
    noise = max(abs(a[k] - c[k]) for k in a)
    assert noise <= 1e-2 * scale, f"micro-batches alone moved the scores by {noise}"
    tolerance = 10 * max(noise, torch.finfo(torch.float32).eps * scale)
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst <= tolerance, f"FSDP scores differ by {worst} (tolerance {tolerance}, scale {scale})"
    # The check has teeth: 4 steps of training move the scores far beyond the tolerance, so a checkpoint
    # a step off, or one holding a stale or partial weight, would not pass.
    halfway = _scores(collection, one / "checkpoint-4")
    assert max(abs(a[k] - halfway[k]) for k in a) > 100 * tolerance

    # Resume under FSDP: the run cut back to checkpoint-4 (as if killed after it) and resumed by 2 sharded
    # processes trains steps 5-8 only and ends with the uninterrupted run's losses and scores.
    cut = tmp_path / "cut"
    shutil.copytree(two / "checkpoint-4", cut / "checkpoint-4")
    shutil.copy(two / "run.json", cut / "run.json")
    command = torchrun(2, str(LAUNCHER), "train", "--config", str(toml), "--output", str(cut), "--resume")
    done = subprocess.run(command, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    losses = {
        run.name: {
            e["step"]: e["loss"] for e in json.loads((run / "train_summary.json").read_text())["log"] if "loss" in e
        }
        for run in (two, cut)
    }
    assert sorted(losses["cut"]) == sorted(losses["two"]) == list(range(1, 9))  # steps 1-4 from the checkpoint's log
    assert [losses["cut"][s] for s in range(5, 9)] == pytest.approx([losses["two"][s] for s in range(5, 9)], rel=1e-5)
    resumed = _scores(collection, cut / "final")
    worst = max(abs(b[k] - resumed[k]) for k in b)
    assert worst <= tolerance, f"resumed FSDP scores differ by {worst} (tolerance {tolerance})"


def test_fsdp_in_a_process_not_launched_by_torchrun_is_refused(collection, tmp_path):
    settings = _config(collection, tmp_path / "run", max_steps=1, save_steps=[], fsdp="full_shard")
    with pytest.raises(InputError, match="fsdp 'full_shard': .* not launched by torchrun"):
        train(load_config(None, **settings), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "env, passed",
    [
        ({"FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT"}, "FSDP_STATE_DICT_TYPE=SHARDED_STATE_DICT"),
        ({"FSDP_STATE_DICT_TYPE": "3"}, "FSDP_STATE_DICT_TYPE=3"),  # torch's StateDictType by number
        ({"FSDP_STATE_DICT_TYPE": "LOCAL_STATE_DICT", "FSDP_VERSION": "1"}, "FSDP_STATE_DICT_TYPE=LOCAL_STATE_DICT"),
        ({"FSDP_VERSION": "2"}, "FSDP_STATE_DICT_TYPE unset with FSDP_VERSION=2 (accelerate's default: SHARDED"),
    ],
)
def test_an_fsdp_state_dict_that_would_drop_the_adapter_is_refused(collection, tmp_path, monkeypatch, env, passed):
    """accelerate launch with such an FSDP config: checkpoints would hold the Trainer's shards, not our adapter."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.delenv("FSDP_STATE_DICT_TYPE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = _config(collection, tmp_path / "run", max_steps=1, save_steps=[])
    with pytest.raises(InputError) as exc:
        train(load_config(None, **settings), progress=False)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(passed), message
    assert "expected FULL_STATE_DICT" in message and "fsdp_state_dict_type: FULL_STATE_DICT" in message
    assert list(tmp_path.iterdir()) == [], "a refused run leaves nothing behind (no folder, lock or run.json)"


@pytest.mark.parametrize(
    "env",
    [
        {"ACCELERATE_USE_FSDP": "true", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT", "FSDP_VERSION": "2"},
        {"ACCELERATE_USE_FSDP": "true", "FSDP_STATE_DICT_TYPE": "1"},
        {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"},  # FSDP1's default is the full state dict
        {"FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT"},  # no FSDP: the setting is never read
    ],
)
def test_full_state_dicts_and_runs_without_fsdp_pass_the_check(collection, tmp_path, monkeypatch, env):
    from relevance_lens.train.trainer import _require_full_state_dict

    for key in ("ACCELERATE_USE_FSDP", "FSDP_STATE_DICT_TYPE", "FSDP_VERSION"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _require_full_state_dict(load_config(None, **_config(collection, tmp_path / "run")))


def test_the_shipped_accelerate_config_saves_full_state_dicts(monkeypatch):
    """configs/accelerate_fsdp.yaml, read as ``accelerate launch --config_file`` reads it: FSDP2 with full state
    dicts, in the environment accelerate gives the processes, from which its FSDP plugin is made."""
    import yaml
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import StateDictType

    import relevance_lens
    from relevance_lens.train.trainer import _require_full_state_dict

    path = Path(relevance_lens.__file__).parent / "configs" / "accelerate_fsdp.yaml"
    shipped = yaml.safe_load(path.read_text())
    assert shipped["distributed_type"] == "FSDP"
    assert shipped["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert shipped["fsdp_config"]["fsdp_version"] == 2
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "relevance_lens", "train"])
    args = _validate_launch_command(args)[0]  # fills the arguments from the file, as accelerate launch does
    env = {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))}
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()  # what the Trainer's Accelerator makes from that environment
    assert plugin.fsdp_version == 2 and plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    _require_full_state_dict(load_config(None))  # and train lets it through


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs gloo")
def test_fsdp_on_cpu_processes_is_refused_not_run_as_ddp(collection, tmp_path):
    """Without tests/cpu_fsdp.py accelerate would drop FSDP and train with DDP under an fsdp run.json."""
    settings = _config(collection, tmp_path / "x", max_steps=1, save_steps=[], fsdp="full_shard")
    settings.pop("output")
    toml = write_toml(tmp_path / "train.toml", settings)
    command = torchrun(2, "-m", "relevance_lens", "train", "--config", str(toml), "--output", str(tmp_path / "run"))
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert "accelerate did not enable FSDP here (distributed type MULTI_CPU" in " ".join(done.stderr.split())
    assert not (tmp_path / "run").exists(), "a refused run leaves no folder (no run.json claiming FSDP)"


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gpt2"])
def test_transformer_based_wrap_finds_the_decoder_blocks(family):
    """FSDP's TRANSFORMER_BASED_WRAP (the shipped config's policy) shards block by block, LoRA attached or not."""
    from accelerate import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    from relevance_lens.model.lora import LoraSettings, attach_lora
    from relevance_lens.model.roles import blocks
    from tiny import tiny_reranker

    reranker = tiny_reranker(family)
    block_class = type(blocks(reranker.base_model, reranker.architecture)[0])
    for lora in (False, True):  # the bare reranker, then with LoRA attached
        if lora:
            attach_lora(reranker, LoraSettings(rank=2, alpha=4.0, targets="all"))
        plugin = FullyShardedDataParallelPlugin(auto_wrap_policy=transformer_auto_wrap_policy)
        plugin.set_auto_wrap_policy(reranker)
        assert plugin.transformer_cls_names_to_wrap == [block_class.__name__], lora
        assert plugin.auto_wrap_policy.keywords["transformer_layer_cls"] == {block_class}, lora
