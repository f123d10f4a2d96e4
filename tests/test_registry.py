"""One registry of analyses: every setting of every analysis is reachable from the CLI and from a
study file, and both reach the analysis through the registry with the same settings."""

from __future__ import annotations

import dataclasses
import json

import pytest
import typer
from typer.testing import CliRunner

from relevance_lens import cli
from relevance_lens.dissect import registry
from relevance_lens.dissect.registry import ANALYSES
from relevance_lens.errors import InputError
from relevance_lens.study import expand, load_study
from relevance_lens.study import run as study_run

#: A value other than the default, per setting; a new setting must be added here (the test says so).
OTHER = {
    "sweeps": ["roles", "window"], "window": 4, "window_stride": 2, "cached": False, "merge": "on", "verify": False,
    "permutations": 123, "seed": 7, "side": "right", "probe": "ridge", "l2": 0.5, "steps": 17,
    "probe_split": "dev", "adapter_off": True, "versus": "bm25",
    "heads.sweeps": ["keep-head"], "layers": [1, 2],
    "baseline": "zero", "pairs": 3, "query_ids": ["q1"], "tolerance": 0.1, "attribute.steps": 8, "max_steps": 64,
    "components": ["resid", "mlp"], "positions": ["last", "all"], "ablated": ["drop-mlp"], "min_gap": 0.01,
}  # fmt: skip

SETTINGS = [(name, f) for name, entry in ANALYSES.items() for f in dataclasses.fields(entry.settings)]


def test_every_setting_has_a_test_value():
    missing = [f"{name}.{f.name}" for name, f in SETTINGS if f.name not in OTHER and f"{name}.{f.name}" not in OTHER]
    assert missing == [], "add a non-default value for these settings to OTHER"


def other_settings(name: str):
    cls = ANALYSES[name].settings
    # "analysis.setting" overrides a shared setting name whose values differ per analysis (sweeps)
    return cls(**{f.name: OTHER.get(f"{name}.{f.name}", OTHER.get(f.name)) for f in dataclasses.fields(cls)})


@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_other_values_differ_from_the_defaults(name):
    defaults = dataclasses.asdict(ANALYSES[name].settings())
    others = dataclasses.asdict(other_settings(name))
    assert [k for k in defaults if defaults[k] == others[k]] == []


def cli_args(name: str, settings) -> list[str]:
    """The command line that sets every field of ``settings``, read off the click command itself."""
    command = typer.main.get_command(cli.app).commands["analyze"].commands[name]
    params = {p.name: p for p in command.params}
    args = []
    for f in dataclasses.fields(settings):
        param, value = params[f.name], getattr(settings, f.name)
        if param.is_flag:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.multiple:
            args += [a for v in value for a in (param.opts[0], str(v))]
        else:
            args += [param.opts[0], str(value)]
    return args


@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_every_setting_is_reachable_from_the_cli(name, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(registry, "run_analysis", lambda n, inputs, settings, context: seen.append((n, settings)))
    wanted = other_settings(name)
    split = ["--split", "dev", "--max-queries", "2"] if ANALYSES[name].uses_eval else []
    args = ["analyze", name, str(tmp_path), *split, *cli_args(name, wanted), "--store", str(tmp_path / "s.sqlite")]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert seen == [(name, wanted)]


STUDY = """
[study]
name = "reach"
models = ["smollm2-135m"]
ranks = [2, 8]

[evals.dev]
split = "dev"
max_queries = 2

[analyses.{name}]
{settings}
"""


def toml_value(value) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_every_setting_is_reachable_from_a_study_file(name, tmp_path, monkeypatch):
    wanted = other_settings(name)
    lines = "\n".join(f"{k} = {toml_value(v)}" for k, v in dataclasses.asdict(wanted).items())
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(name=name, settings=lines))
    study = load_study(path)
    assert study.analyses[name].settings == wanted
    cells = [c for c in expand(study) if c.kind == "analyze" and c.config["analysis"] == name]
    assert cells and all(ANALYSES[name].settings(**c.config["settings"]) == wanted for c in cells)
    # The runner hands the registry exactly these settings.
    seen = []
    monkeypatch.setitem(
        registry.ANALYSES, name, dataclasses.replace(ANALYSES[name], run=lambda i, s, c: seen.append(s) or [])
    )
    monkeypatch.setattr(study_run, "ANALYSES", registry.ANALYSES)
    monkeypatch.setattr(study_run, "build_evalset", lambda ev: None)
    options = study_run.RunOptions(workdir=tmp_path / "w", store=tmp_path / "s.sqlite")
    study_run._analyze(cells[0], options, study_run.Store(options.store), console=None)
    assert seen and seen[0] == wanted


@pytest.mark.parametrize(
    ("name", "key", "value", "message"),
    [
        ("ablate", "sweeps", '["everything"]', "unknown sweep"),
        ("ablate", "merge", '"maybe"', "expected auto, on or off"),
        ("weights", "side", '"up"', "left.*right"),
        ("lens", "probe", '"svm"', "none.*ridge.*logistic"),
        ("lens", "adapter", '"x"', "unknown key"),
    ],
)
def test_bad_settings_are_refused_in_both_places_with_the_file_named(tmp_path, name, key, value, message):
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(name=name, settings=f"{key} = {value}"))
    with pytest.raises(InputError, match=message) as caught:
        load_study(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    if key in {f.name for f in dataclasses.fields(ANALYSES[name].settings)}:
        with pytest.raises(InputError, match=message):
            ANALYSES[name].settings(**{key: json.loads(value)})


@pytest.mark.parametrize(
    ("table", "line", "message"),
    [
        ("evals.dev", 'depth = "100"', "depth = '100': expected an integer"),
        ("evals.dev", "depth = 2.5", "depth = 2.5: expected an integer"),
        ("analyses.ablate", "window = true", "window = True: expected an integer"),
        ("analyses.ablate", "sweeps = [1]", "sweeps = \\[1\\]: expected a list of strings"),
        ("analyses.ablate", "merge = 3", "merge = 3: expected a string"),
        ("analyses.lens", 'l2 = "big"', "l2 = 'big': expected a number"),
        ("study", 'baseline = "yes"', "baseline = 'yes': expected true or false"),
    ],
)
def test_wrongly_typed_study_values_are_one_line_errors(tmp_path, table, line, message):
    text = STUDY.format(name="ablate", settings="").replace(f"[{table}]", f"[{table}]\n{line}")
    if f"[{table}]" not in text:
        text += f"\n[{table}]\n{line}\n"
    path = tmp_path / "study.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as caught:
        load_study(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
