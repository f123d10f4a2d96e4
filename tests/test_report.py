"""The HTML report: every section from a store that has its rows, a note where it has none,
read-only, self-contained, and rendered by headless Chromium without console errors."""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relevance_lens.cli import app
from relevance_lens.errors import InputError
from relevance_lens.report.page import read_rows, render, write_report
from relevance_lens.store import Store

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
SECTIONS = ("checkpoints", "ranks", "targets", "layer-heatmap", "layer-sweeps", "roles", "weights", "lens", "configs")
ROLES = {"mha": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down"), "all": ("q", "k", "v", "o", "gate", "up", "down")}
EVAL = {"eval": "dev", "depth": 10, "max_queries": 40, "n_queries": 40, "dtype": "bf16"}


def synthetic_rows() -> list[dict]:
    """Rows shaped as relevance_lens.dissect.analyses and the study driver write them (2 models x 2 ranks x 3 "
    "targets)."""
    rows = []
    for m, model in enumerate(("org/alpha-1b", "org/beta-2b")):
        head = f"{model[4:]}-head"
        ident = dict(model=model, rank=None, targets="none")
        rows += [
            dict(
                run=head,
                checkpoint="final",
                analysis="train",
                metric="steps",
                value=40,
                **ident,
                config_json={"train": {"model": model, "targets": "none", "seed": 42, "lr": 0.002}},
            )
        ]
        rows += [
            dict(
                run=head,
                checkpoint=c,
                analysis="checkpoints",
                metric="nDCG@10",
                value=0.30 + 0.01 * i,
                p_value=0.2,
                config_json={**EVAL, "baseline": "bm25"},
                **ident,
            )
            for i, c in enumerate(("checkpoint-10", "checkpoint-40", "final"))
        ]
        for rank in (1, 8):
            for targets in ("mha", "mlp", "all"):
                run = f"{model[4:]}-r{rank}-{targets}"
                ident = dict(model=model, rank=rank, targets=targets)
                final = dict(run=run, checkpoint="final", **ident)  # the run's final adapter
                base = {**EVAL, "baseline": head}
                train = {"train": {"model": model, "rank": rank, "targets": targets, "seed": 42, "lr": 0.0005}}
                rows += [
                    dict(**final, analysis="train", metric=metric, value=value, config_json=train)
                    for metric, value in (("steps", 80), ("loss", 0.5))
                ]
                rows.append(
                    dict(
                        run=run,
                        checkpoint="bm25",
                        analysis="checkpoints",
                        metric="nDCG@10",
                        value=0.35,
                        config_json=base,
                    )
                )
                for i, step in enumerate((5, 10, 20, 40, 80)):
                    value = 0.3 + 0.05 * i + 0.01 * rank**0.5 + (0.02 if targets == "all" else 0) + 0.01 * m
                    rows.append(
                        dict(
                            run=run,
                            checkpoint=f"checkpoint-{step}",
                            analysis="checkpoints",
                            metric="nDCG@10",
                            value=value,
                            p_value=0.001 if i > 2 else 0.3,
                            config_json=base,
                            **ident,
                        )
                    )
                rows.append(
                    dict(
                        **final, analysis="checkpoints", metric="nDCG@10", value=value, p_value=0.002, config_json=base
                    )
                )
                ablate = {**EVAL, "permutations": 1000, "seed": 0}
                for layer in range(4):
                    for role in ROLES[targets]:
                        rows.append(
                            dict(
                                **final,
                                analysis="ablate:drop-layer-role",
                                variant=f"-L{layer}.{role}",
                                layer=layer,
                                role=role,
                                metric="nDCG@10 Δfull",
                                value=-0.01 * layer * (role in ("up", "q")),
                                p_value=0.01 if layer == 2 else 0.8,
                                config_json={**ablate, "sweep": "drop-layer-role"},
                            )
                        )
                        rows += [
                            dict(
                                **final,
                                analysis="weights",
                                layer=layer,
                                role=role,
                                metric=metric,
                                value=value,
                                config_json={"side": "left"},
                            )
                            for metric, value in (
                                ("frobenius", 0.1 * (layer + 1) * rank**0.5),
                                ("effective_rank", min(rank, 2.0)),
                            )
                        ]
                    rows.append(
                        dict(
                            **final,
                            analysis="ablate:window",
                            variant=f"L{layer}-{layer + 2}",
                            layer=layer,
                            metric="nDCG@10 Δbase",
                            value=0.02 * layer,
                            p_value=0.03,
                            config_json={**ablate, "sweep": "window"},
                        )
                    )
                roles = {**ablate, "sweep": "roles"}
                for role in ROLES[targets]:
                    for variant, metric, value in ((f"-{role}", "nDCG@10 Δfull", -0.02), (role, "nDCG@10 Δbase", 0.03)):
                        rows.append(
                            dict(
                                **final,
                                analysis="ablate:roles",
                                variant=variant,
                                role=role,
                                metric=metric,
                                value=value,
                                p_value=0.04,
                                config_json=roles,
                            )
                        )
                rows.append(
                    dict(
                        **final,
                        analysis="ablate:roles",
                        variant="full",
                        metric="nDCG@10",
                        value=value,
                        config_json=roles,
                    )
                )
                for layer in range(5):
                    for variant in ("head", "head-base"):
                        rows.append(
                            dict(
                                **final,
                                analysis="lens",
                                variant=variant,
                                layer=layer,
                                metric="nDCG@10",
                                value=0.1 * layer + (0.05 if variant == "head" else 0),
                                config_json={**EVAL, "probe": "none"},
                            )
                        )
                rows.append(
                    dict(
                        run=run,
                        checkpoint="checkpoint-5",
                        analysis="subspace",
                        variant=f"{run}/final",
                        layer=0,
                        role=ROLES[targets][0],
                        metric="phi@1,1",
                        value=0.7,
                        config_json={"side": "left"},
                        **ident,
                    )
                )
    return rows


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "results.sqlite"
    Store(path).append(synthetic_rows())
    return path


@pytest.fixture(scope="module")
def page(store, tmp_path_factory):
    output = tmp_path_factory.mktemp("page") / "report.html"
    write_report(store, output)
    return output


def _section(text: str, name: str) -> str:
    found = re.search(rf'<section id="{name}">(.*?)</section>', text, re.S)
    assert found, f"section {name} missing"
    return found.group(1)


def test_every_section_from_a_full_store(page):
    text = page.read_text()
    for name in SECTIONS:
        body = _section(text, name)
        assert 'class="note"' not in body, name
    for name in SECTIONS[:-1]:
        assert "data:image/png;base64," in _section(text, name), name
    # Six finals per model at raw p = 0.002 ("**"): Holm makes each 0.012 ("*").
    ranks = _section(text, "ranks")
    assert re.search(r"0\.\d{4}\*</td>", ranks) and "**" not in ranks
    assert "alpha-1b" in _section(text, "ranks") and "beta-2b" in _section(text, "ranks")
    configs = _section(text, "configs")
    assert configs.count("<details>") >= 14 and "&quot;lr&quot;: 0.0005" in configs


def test_self_contained(page):
    text = page.read_text()
    assert "<script" not in text and not re.search(r'(src|href)="(?!data:|#)', text)


def test_images_are_valid_pngs(page):
    from PIL import Image

    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page.read_text())
    assert len(images) >= 8  # one figure or more per plotted section
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100


def test_configs_section_shows_what_each_cell_took(tmp_path):
    from relevance_lens import study as st
    from relevance_lens.provenance import cpu_name
    from relevance_lens.report.results import SECONDS
    from relevance_lens.study.plan import SECONDS as WRITTEN

    assert SECONDS == WRITTEN
    store = tmp_path / "r.sqlite"
    rows = [r for r in synthetic_rows() if r["analysis"] == "train"]
    run = rows[0]["run"]
    Store(store).append(
        rows
        + [
            st.timing_row(run, "train", rows[0]["config_json"], 54.61),
            st.timing_row(run, "checkpoints:dev", {"analysis": "checkpoints"}, 1234.5),
            {**st.timing_row(run, "x", {}, 1.0), "metric": "done"},  # a marker row: no timing
        ]
    )
    text = render(read_rows(store), "t")
    time = _section(text, "configs").split("<h3>Time</h3>", 1)[1]
    cells = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", time)
    # In the order they started: the 1,234.5 s cell began before the 54.6 s one (both just ended).
    assert [(r, v, sec) for r, v, sec, _ in cells] == [(run, "checkpoints:dev", "1,234.5"), (run, "train", "54.6")]
    assert all(machine.startswith(html.escape(cpu_name())) for *_, machine in cells)
    # Timing rows are bookkeeping, not results: no section counts them.
    assert f"{len(rows)} result rows" in text


@pytest.mark.parametrize("keep", [(), ("checkpoints", "train")])
def test_missing_sections_become_notes(tmp_path, keep):
    store = tmp_path / "r.sqlite"
    Store(store).append(r for r in synthetic_rows() if r["analysis"] in keep)
    text = render(read_rows(store), "t")
    present = {"checkpoints", "ranks", "targets", "configs"} if keep else set()
    for name in SECTIONS:
        body = _section(text, name)
        assert ('class="note"' in body) == (name not in present), name
    assert "drop-layer-role" in _section(text, "layer-heatmap")  # the note says how to fill it


@pytest.mark.parametrize("sweep,kept", [("drop-role", False), ("keep-role", True)])
def test_roles_section_reads_each_role_sweep(tmp_path, sweep, kept):
    """A study that runs only the removed (or only the kept-alone) half of the roles sweep still gets the section."""
    rows = []
    for r in synthetic_rows():
        if r["analysis"] == "ablate:roles":
            if r["variant"] != "full" and r["variant"].startswith("-") == kept:
                continue
            r = {**r, "analysis": f"ablate:{sweep}", "config_json": {**r["config_json"], "sweep": sweep}}
        rows.append(r)
    store = tmp_path / "r.sqlite"
    Store(store).append(rows)
    body = _section(render(read_rows(store), "t"), "roles")
    assert 'class="note"' not in body and "data:image/png;base64," in body
    cells = re.findall(r"<tr><td>[^<]*</td><td>[^<]*</td><td>(\w+)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", body)
    assert cells, body[:500]
    assert all((removed == "-") == kept and (alone == "-") != kept for _, removed, alone in cells), cells


def test_missing_or_foreign_store_fails(tmp_path):
    with pytest.raises(InputError, match="no such results store"):
        write_report(tmp_path / "nothing.sqlite", tmp_path / "r.html")
    (tmp_path / "junk.sqlite").write_text("not a database")
    with pytest.raises(InputError, match="not a relevance-lens results store"):
        write_report(tmp_path / "junk.sqlite", tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_cli_report_reads_only(store, tmp_path):
    before = (store.read_bytes(), store.stat().st_mtime_ns, sorted(p.name for p in store.parent.iterdir()))
    result = CliRunner().invoke(app, ["report", str(store), "--output", str(tmp_path / "out.html")])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and (tmp_path / "out.html").stat().st_size > 10_000
    assert (store.read_bytes(), store.stat().st_mtime_ns, sorted(p.name for p in store.parent.iterdir())) == before


# ---------------------------------------------------------------- the browser


def _chromium(url: str, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = workdir / "profile"
    profile.mkdir(parents=True, exist_ok=True)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    return subprocess.run([CHROMIUM, *flags, *extra, url], check=False, capture_output=True, text=True, timeout=180)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_renders_in_headless_chromium(page, tmp_path):
    # The check itself can fail: a page with a script error is caught.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>notDefined();</script></body></html>")
    assert _console_errors(_chromium(bad.as_uri(), tmp_path / "a", "--dump-dom").stderr)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    result = _chromium(page.as_uri(), tmp_path / "b", f"--screenshot={shot}", "--window-size=1280,4000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not _console_errors(result.stderr)
    assert shot.is_file() and shot.stat().st_size > 50_000
    dom = _chromium(page.as_uri(), tmp_path / "c", "--dump-dom")
    assert not _console_errors(dom.stderr)
    for name in SECTIONS:
        assert f'<section id="{name}">' in dom.stdout, name
    assert dom.stdout.count("<img") == page.read_text().count("<img")
    os.environ.get("CI") and print(f"screenshot: {shot}")
