"""Mechanism analyses across checkpoints: a study's ``checkpoints`` key runs heads, attribute and
patch on each listed checkpoint of a run (one cell each, skipped when done), rows carry the
checkpoint, a bad name is one line naming the setting, and the report shows checkpoints side by side."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from dissectfix import one_thread  # noqa: F401  (autouse: one thread)
from relevance_lens import study as st
from relevance_lens.errors import InputError
from relevance_lens.study.plan import expand
from studyfix import run_study, sorted_rows, study_files, study_toml

TWO = '["checkpoint-2", "checkpoint-4"]'
ANALYSES = """[analyses.heads]
sweeps = ["drop-head"]
permutations = 20
checkpoints = {checkpoints}

[analyses.attribute]
pairs = 1
steps = 4
max_steps = 8
tolerance = 10.0
checkpoints = {checkpoints}

[analyses.patch]
pairs = 1
components = ["resid"]
positions = ["last", "all"]
min_gap = 0.0
checkpoints = {checkpoints}
"""
STUDY = study_toml("ckpts", max_steps=4, save_steps=(2,), baseline=None, analyses=ANALYSES)
MECHANISMS = ("heads", "attribute", "patch")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return study_files(tmp_path_factory.mktemp("ckpt-study"), "ckpts.toml", STUDY, checkpoints=TWO)


def _checkpoints(store, analysis: str) -> set[str]:
    with closing(sqlite3.connect(store)) as conn:
        return {c for (c,) in conn.execute("SELECT DISTINCT checkpoint FROM results WHERE analysis = ?", (analysis,))}


@pytest.mark.slow
def test_two_checkpoints_give_rows_for_both_a_rerun_skips_and_the_report_shows_both(files, tmp_path):
    from relevance_lens.report.attribute_sections import attribute_section
    from relevance_lens.report.head_sections import heads_section
    from relevance_lens.report.patch_sections import patch_section
    from relevance_lens.report.results import Results, read_rows

    work = tmp_path / "work"
    store, counts = run_study(files(), work)
    assert counts["cells"] == counts["ran"] == 1 + 3 * 2  # training, then each analysis at each checkpoint
    for analysis in MECHANISMS:
        assert _checkpoints(store, analysis) == {"checkpoint-2", "checkpoint-4"}, analysis
    rows = sorted_rows(store)
    again = run_study(files(), work)[1]
    assert again["ran"] == 0 and again["skipped"] == 7
    assert sorted_rows(store) == rows
    res = Results(read_rows(store))
    for section in (heads_section(res), attribute_section(res), patch_section(res)):
        assert section.body is not None, section.id
        body = section.body.split("base64,")  # the figures' alt text and the tables name the checkpoints
        text = body[0] + "".join(part.split('"', 1)[1] for part in body[1:])
        assert text.index("checkpoint-2") < text.index("checkpoint-4"), section.id  # by step


def test_cells_per_checkpoint_and_all_expand_from_the_training_settings(files):
    cells = [c for c in expand(st.load_study(files())) if c.kind == "analyze"]
    assert sorted(c.what for c in cells if c.config["analysis"] == "heads") == [
        "heads on tiny at checkpoint-2",
        "heads on tiny at checkpoint-4",
    ]
    every = [c for c in expand(st.load_study(files("all.toml", checkpoints='"all"'))) if c.kind == "analyze"]
    assert [c.config.get("checkpoint", "final") for c in every if c.config["analysis"] == "patch"] == [
        "checkpoint-2",
        "checkpoint-4",
        "final",
    ]
    # The default (final) keeps its cell ids: no checkpoint key in the cell config.
    final = [c for c in expand(st.load_study(files("final.toml", checkpoints='["final"]'))) if c.kind == "analyze"]
    assert all("checkpoint" not in c.config for c in final) and len(final) == 3


@pytest.mark.parametrize(
    "checkpoints, message",
    [
        ('["checkpoint-3"]', "checkpoints names 'checkpoint-3', which run .* does not save; expected .*checkpoint-2"),
        ('["ckpt-2"]', "checkpoints 'ckpt-2' is not a checkpoint name"),
        ('["final", "final"]', "checkpoints names a checkpoint twice"),
        ("[]", "checkpoints is empty"),
    ],
)
def test_a_bad_checkpoint_is_one_line_naming_the_setting(files, checkpoints, message):
    with pytest.raises(InputError, match=r"\[analyses\.heads\]: " + message) as caught:
        expand(st.load_study(files("bad.toml", checkpoints=checkpoints)))
    assert "\n" not in str(caught.value)


def test_checkpoints_is_refused_for_analyses_that_run_on_final_only(files):
    text = STUDY.replace("[analyses.heads]", '[analyses.lens]\ncheckpoints = ["final"]\n\n[analyses.heads]')
    with pytest.raises(InputError, match=r"\[analyses\.lens\]: unknown key\(s\) checkpoints"):
        st.load_study(files("lens.toml", text=text, checkpoints=TWO))
