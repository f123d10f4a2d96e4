"""The report's figures and tables as files for a paper (``relevance-lens report --figures DIR``).

Every figure of the page is drawn again by the same function in the :data:`PAPER` style (one
column 3.3 in wide, several panels 6.9 in, fonts 7 to 8 pt, Okabe-Ito colours) and written as
``NAME.pdf`` and ``NAME.svg`` (vector; text kept as text) and ``NAME.png`` (300 dpi); every table
as ``NAME.csv`` and ``NAME.tex`` (booktabs, with the page's caption), holding the page's cell text:
values to 4 decimals followed by their significance marks. ``NAME`` is stable and descriptive
(``checkpoints-ndcg10-dev-top-10-40-queries``); a second figure of the same name (more runs than one
figure's panels) gets ``-2``, ``-3``...

Everything is written into a hidden folder beside ``DIR`` first, so that an error leaves ``DIR``
as it was; then each file is moved into ``DIR`` by one rename (a file is there whole or not at
all). Files in ``DIR`` that this report does not write are left alone.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from relevance_lens.data.formats import atomic_write
from relevance_lens.errors import InputError
from relevance_lens.report.figures import PAPER, Style
from relevance_lens.report.tables import Section, Table

#: The formats every figure is written in.
FIGURE_FORMATS = ("pdf", "svg", "png")


def _unique(names: list[str]) -> list[str]:
    """Names made unique in order: the second ``x`` becomes ``x-2``."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def table_frame(table: Table):
    """The table as a pandas DataFrame of the page's cell text."""
    import pandas as pd

    return pd.DataFrame(table.text(), columns=table.header, dtype=object)


def table_latex(table: Table, name: str) -> str:
    """A LaTeX ``table`` (booktabs rules, special characters escaped, Δ as ``$\\Delta$``)."""
    text = table_frame(table).to_latex(
        index=False, escape=True, caption=table.caption or None, label=f"tab:{name}", position="t"
    )
    return text.replace("Δ", r"$\Delta$")


def _write(sections: list[Section], folder: Path, style: Style) -> list[str]:
    """Every figure and table of ``sections`` into ``folder``; the file names written."""
    written = []
    plots = [p for s in sections for p in s.plots]
    for plot, name in zip(plots, _unique([p.name for p in plots])):
        fig = plot.figure(style)
        for fmt in FIGURE_FORMATS:
            with atomic_write(folder / f"{name}.{fmt}", "wb") as fh:
                plot.save(fig, fh, fmt, style)
            written.append(f"{name}.{fmt}")
    tables = [t for s in sections for t in s.tables]
    for table, name in zip(tables, _unique([t.name for t in tables])):
        with atomic_write(folder / f"{name}.csv") as fh:
            table_frame(table).to_csv(fh, index=False, lineterminator="\n")
        with atomic_write(folder / f"{name}.tex") as fh:
            fh.write(table_latex(table, name))
        written += [f"{name}.csv", f"{name}.tex"]
    return written


def write_figures(sections: list[Section], folder: str | Path, style: Style = PAPER) -> list[Path]:
    """Write the figures (PDF, SVG, PNG) and tables (CSV, LaTeX) of ``sections`` into ``folder``.

    Args:
        sections: the report's sections, as :func:`relevance_lens.report.page.sections` builds them.
        folder: where the files go (created; files already there with other names are kept).
        style: sizes and fonts (default :data:`PAPER`).

    Returns:
        The paths written, in report order.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--figures {folder}: expected a folder, found a file; pass a folder (created if missing)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{secrets.token_hex(6)}.tmp"
    staging.mkdir()
    try:
        names = _write(sections, staging, style)
        folder.mkdir(exist_ok=True)
        for name in names:  # one rename per file: each appears whole, replacing its earlier version
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [folder / name for name in names]
