"""The safe surface: only safetensors/JSON/TOML are loaded, names stay in the workdir, the report
escapes every string, and no remote code runs unless asked for."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest

from relevance_lens.errors import InputError
from relevance_lens.model.backbone import ModelSource, load_backbone
from relevance_lens.model.lora import LoraSettings, attach_lora
from relevance_lens.model.reranker import Reranker
from relevance_lens.report.page import write_report
from relevance_lens.store import Store
from relevance_lens.study.spec import load_study
from test_report import synthetic_rows
from tiny import save_tiny, tiny_reranker

SRC = Path(__file__).resolve().parent.parent / "src" / "relevance_lens"
EVIL = '<script>alert(1)</script><img src=x onerror="alert(2)">'


class _Trap:
    """Unpickling this creates a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _plant_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Trap(marker)))


def _one_line(exc: pytest.ExceptionInfo, *names: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and all(n in message for n in names), message


@pytest.mark.parametrize("keep_config", [True, False])
def test_a_pickled_adapter_is_refused_by_name_and_never_unpickled(tmp_path, keep_config):
    reranker = tiny_reranker("llama")
    attach_lora(reranker, LoraSettings(rank=2, targets="q", dropout=0.0))
    folder = tmp_path / "adapter"
    reranker.save(folder)
    (folder / "adapter_model.safetensors").unlink()
    if not keep_config:  # without its config the adapter would be skipped silently: refused too
        (folder / "adapter_config.json").unlink()
    # A folder from elsewhere: no manifest of ours (with one, the missing file is named first).
    (folder / "manifest.json").unlink()
    saved = json.loads((folder / "reranker.json").read_text())
    saved.pop("manifest", None)
    (folder / "reranker.json").write_text(json.dumps(saved))
    _plant_pickle(folder / "adapter_model.bin", tmp_path / "unpickled")
    with pytest.raises(InputError) as exc:
        tiny_reranker("llama").load_adapter(folder)
    _one_line(exc, str(folder), "adapter_model.bin", "adapter_model.safetensors")
    assert not (tmp_path / "unpickled").exists()


def test_a_model_folder_of_pickled_weights_is_refused_by_name(tmp_path):
    folder = save_tiny("llama", tmp_path / "model")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    _plant_pickle(folder / "pytorch_model.bin", tmp_path / "unpickled")
    with pytest.raises(InputError) as exc:
        Reranker.from_pretrained(str(folder))
    _one_line(exc, str(folder), "pytorch_model.bin", "safetensors")
    assert not (tmp_path / "unpickled").exists()


def test_no_remote_code_and_no_pickles_unless_asked(monkeypatch):
    import transformers

    calls = []

    def record(*args, **kwargs):
        calls.append(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", record)
    source = ModelSource(name="org/model", kind="hub", path="org/model")
    with pytest.raises(InputError, match="org/model"):
        load_backbone(source)
    assert calls == [{"dtype": calls[0]["dtype"], "trust_remote_code": False, "use_safetensors": True}]


def test_the_source_has_no_unsafe_loaders():
    """Nothing in the package unpickles, evaluates strings or turns remote code on by itself."""
    unsafe = re.compile(
        r"trust_remote_code\s*=\s*True|torch\.load\(|pickle\.loads?\(|import pickle|weights_only\s*=\s*False"
        r"|(?<![.\w])eval\(|(?<![.\w])exec\(|yaml\.load\(|np\.load\([^)]*allow_pickle\s*=\s*True"
    )
    found = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if unsafe.search(line)
    ]
    assert not found, found


STUDY = """
[study]
name = {name}
models = [{model}]
"""


@pytest.mark.parametrize(
    "name,model,bad",
    [
        ('"../../escaped"', '"smollm2-135m"', "name"),
        ('"/tmp/absolute"', '"smollm2-135m"', "name"),
        ('"a/b"', '"smollm2-135m"', "name"),
        ('".."', '"smollm2-135m"', "name"),
        ('"ok"', '{ name = "org/model", label = "../../escaped" }', "label"),
        ('"ok"', '{ name = "org/model", label = "a/b" }', "label"),
    ],
)
def test_study_and_run_names_cannot_leave_the_workdir(tmp_path, name, model, bad):
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(name=name, model=model))
    with pytest.raises(InputError) as exc:
        load_study(path)
    _one_line(exc, str(path), bad, "folder under the workdir")


def test_names_that_stay_in_the_workdir_are_accepted(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(name='"my-study_2.1"', model='{ name = "org/model", label = "llama3.1-8b" }'))
    study = load_study(path)
    assert study.spec.name == "my-study_2.1" and study.models[0].short() == "llama3.1-8b"


def test_every_string_in_the_report_is_escaped(tmp_path):
    """Run, model, eval, checkpoint, metric and setting strings all carry markup: none reaches the page raw."""
    rows = []
    for row in synthetic_rows():
        row = dict(row, run=row["run"] + EVIL)
        if row.get("model"):
            row["model"] += EVIL
        if isinstance(row.get("config_json"), dict):
            row["config_json"] = {**row["config_json"], "note": EVIL}
            if "eval" in row["config_json"]:
                row["config_json"]["eval"] = "dev" + EVIL
        rows.append(row)
    Store(tmp_path / "results.sqlite").append(rows)
    page = write_report(tmp_path / "results.sqlite", tmp_path / "report.html").read_text()
    raw = [m.group(0) for m in re.finditer(r"<(script|img src=x)[^>]*>?", page, re.I)]
    assert not raw, raw
    assert page.count("&lt;script&gt;") >= 10  # the strings are there, escaped
