"""Adapters know their base: the identity saved with every adapter, checked on load (issue #12, item 5).

Mistral-7B and Llama-3.1-8B adapters have identical shapes, so PEFT loads one on the other
without a word; the tiny Llama and Mistral here are built from the same sizes for that reason.
"""

import json
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from relevance_lens.data.formats import Passage
from relevance_lens.errors import InputError
from relevance_lens.model.lora import LoraSettings, attach_lora
from relevance_lens.model.manifest import write_manifest
from relevance_lens.model.reranker import CONFIG_FILE, AdapterWarning, Reranker
from tiny import save_tiny
from trainfix import write_collection

QUERY = "what is the capital of france"
PASSAGES = [Passage("d1", "paris", "paris is the capital of france"), Passage("d2", "", "bananas are yellow fruit")]


def _one_line(exc, *needles):
    text = str(exc.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Three tiny bases: llama (seed 0), llama of other weights (seed 1), mistral of llama's shapes; an adapter."""
    root = tmp_path_factory.mktemp("bases")
    paths = {
        "llama": save_tiny("llama", root / "llama"),
        "llama-other": save_tiny("llama", root / "llama-other", seed=1),
        "mistral": save_tiny("mistral", root / "mistral"),
    }
    reranker = Reranker.from_pretrained(str(paths["llama"]))
    attach_lora(reranker, LoraSettings(rank=2, targets="all", dropout=0.0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in reranker.named_parameters():
            if "lora_B" in name or name.startswith("score"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    paths["adapter"] = root / "adapter"
    reranker.save(paths["adapter"])
    paths["scores"] = reranker.score_pairs(QUERY, PASSAGES)
    paths["root"] = root
    return paths


def test_the_base_is_fingerprinted_the_same_in_any_load_dtype(bases):
    """Training loads bf16, scoring fp32: one base must give one identity."""
    fp32 = Reranker.from_pretrained(str(bases["llama"])).base_identity
    bf16 = Reranker.from_pretrained(str(bases["llama"]), dtype=torch.bfloat16).base_identity
    assert fp32 == bf16 and fp32["weights_sha256"] and fp32["config_sha256"]
    other = Reranker.from_pretrained(str(bases["llama-other"])).base_identity
    mistral = Reranker.from_pretrained(str(bases["mistral"])).base_identity
    assert other["config_sha256"] == fp32["config_sha256"] and other["weights_sha256"] != fp32["weights_sha256"]
    assert mistral["config_sha256"] != fp32["config_sha256"]


def test_an_adapter_records_its_base(bases):
    record = json.loads((bases["adapter"] / CONFIG_FILE).read_text())
    loaded = Reranker.from_pretrained(str(bases["llama"])).base_identity
    assert record["base"] == loaded


def test_its_own_base_loads_without_a_warning_and_scores_as_saved(bases):
    with warnings.catch_warnings():
        warnings.simplefilter("error", AdapterWarning)
        reranker = Reranker.from_pretrained(adapter=bases["adapter"])
    assert reranker.score_pairs(QUERY, PASSAGES) == pytest.approx(bases["scores"], abs=1e-5)


def test_the_same_base_under_another_name_loads(bases):
    """Names are not compared (a short name, a path and a hub id can be one model); fingerprints are."""
    copy = shutil.copytree(bases["llama"], bases["root"] / "llama-copy", dirs_exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AdapterWarning)
        reranker = Reranker.from_pretrained(str(copy), bases["adapter"])
    assert reranker.score_pairs(QUERY, PASSAGES) == pytest.approx(bases["scores"], abs=1e-5)


@pytest.mark.parametrize(
    "other, says",
    [("mistral", "whose config differs"), ("llama-other", "same config, different weights")],
)
def test_another_base_is_refused_in_one_line(bases, other, says):
    with pytest.raises(InputError) as exc:
        Reranker.from_pretrained(str(bases[other]), bases["adapter"])
    _one_line(exc, str(bases["adapter"]), says, "--allow-other-base", str(bases[other]))


def test_the_expert_override_loads_another_base_with_a_warning(bases):
    with pytest.warns(AdapterWarning, match="loaded anyway"):
        reranker = Reranker.from_pretrained(str(bases["mistral"]), bases["adapter"], allow_other_base=True)
    assert hasattr(reranker.backbone, "peft_config")


def test_an_adapter_saved_before_bases_were_recorded_loads_with_a_warning(bases, tmp_path):
    legacy = shutil.copytree(bases["adapter"], tmp_path / "legacy")
    record = json.loads((legacy / CONFIG_FILE).read_text())
    del record["base"]
    (legacy / CONFIG_FILE).write_text(json.dumps(record))
    write_manifest(legacy)  # the folder is intact; only the record is missing
    with pytest.warns(AdapterWarning, match="records no base model identity"):
        reranker = Reranker.from_pretrained(str(bases["mistral"]), legacy)
    assert hasattr(reranker.backbone, "peft_config")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "relevance_lens", *map(str, args)], capture_output=True, text=True)


def test_rerank_refuses_another_base_unless_told(bases, tmp_path):
    files = write_collection(tmp_path)
    common = ["--queries", files["queries"], "--corpus", files["corpus"], "--run", files["negatives_run"]]
    common += ["--depth", 3, "--dtype", "fp32"]
    out = tmp_path / "rr.run"
    r = _cli("rerank", "--adapter", bases["adapter"], "--model", bases["mistral"], "--output", out, *common)
    assert r.returncode == 2 and not out.exists()
    assert "whose config differs" in r.stderr and "--allow-other-base" in r.stderr
    other = ["--adapter", bases["adapter"], "--model", bases["mistral"], "--output", out]
    r = _cli("rerank", *other, "--allow-other-base", *common)
    assert r.returncode == 0 and out.exists(), r.stderr
    assert "loaded anyway" in r.stderr


# ---------------------------------------------------------------- adapter metadata (issue #13's fuzz finding)


@pytest.mark.parametrize("pattern, ok", [(None, True), ({}, True), ([], False), (0, False), ("", False)])
def test_alpha_pattern_null_reads_as_none_and_other_non_objects_are_refused(bases, tmp_path, pattern, ok):
    """The slow fuzzer's AttributeError ('NoneType' has no .get): now a parse or one InputError naming the file."""
    from relevance_lens.dissect.weights import ADAPTER_CONFIG, load_adapter_weights

    folder = shutil.copytree(bases["adapter"], tmp_path / "a")
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    (folder / ADAPTER_CONFIG).write_text(json.dumps({**config, "alpha_pattern": pattern}))
    if ok:
        weights = load_adapter_weights(folder)
        assert weights.parts() and all(s == config["lora_alpha"] / 2 for _, _, s in weights.factors.values())
    else:
        with pytest.raises(InputError) as exc:
            load_adapter_weights(folder)
        _one_line(exc, str(folder / ADAPTER_CONFIG), "alpha_pattern")


def test_fingerprint_samples_stay_inside_a_tensor_past_float32_integers():
    # 2**24 + 3 elements: a float32 linspace to the last index rounds it past the end (the embedded
    # SmolLM2's embedding, 28,311,552 values, raised IndexError).
    from relevance_lens.model.manifest import weights_fingerprint

    big = torch.nn.Linear(2**12, 2**12 + 1, bias=False)
    with torch.no_grad():
        big.weight.zero_()
        big.weight[-1, -1] = 1.0  # the last value is sampled: changing it changes the fingerprint
    before = weights_fingerprint(big)
    with torch.no_grad():
        big.weight[-1, -1] = 2.0
    assert before is not None and weights_fingerprint(big) != before
