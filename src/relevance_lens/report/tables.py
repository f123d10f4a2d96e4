"""The report's HTML pieces: tables, formatted cells with significance marks, and the
:class:`Section` every part of the page is made of. A section keeps its :class:`Table` objects
and its plots beside its HTML, so that ``report --figures`` writes the same ones as files."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any


def mark(p: float | None) -> str:
    """Significance stars for a p-value."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def _table(header: list[str], body: list[list[Any]], caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in body)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _cell(value: Any) -> str:
    return html.escape(_text(value))


def _text(value: Any) -> str:
    """A cell as the page shows it (floats to 4 decimals, missing as ``-``), unescaped."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return "-" if value is None else str(value)


@dataclass
class Table:
    """One table of the report: a stable file-name stem, header, rows of cells, and caption."""

    name: str
    header: list[str]
    body: list[list[Any]]
    caption: str = ""

    def html(self) -> str:
        """The table as the page shows it."""
        return _table(self.header, self.body, self.caption)

    def text(self) -> list[list[str]]:
        """The rows as the page's cell text (value, then significance marks)."""
        return [[_text(c) for c in row] for row in self.body]


def _fmt(value: float | None, p: float | None = None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return (f"{value:+.4f}" if signed else f"{value:.4f}") + mark(p)


@dataclass
class Section:
    """A heading and its body, or a note when the store has nothing for it."""

    id: str
    title: str
    body: str | None
    note: str = ""
    plots: list = field(default_factory=list)  # relevance_lens.report.figures.Plot, in page order
    tables: list[Table] = field(default_factory=list)

    def html(self) -> str:
        """The section as HTML: its heading, then its body or its note."""
        inner = self.body if self.body else f'<p class="note">{html.escape(self.note)}</p>'
        return f'<section id="{self.id}"><h2>{html.escape(self.title)}</h2>{inner}</section>'


def _table_raw(header: list[str], body: list[list[Any]]) -> str:
    """A table whose last column is ready-made HTML."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row[:-1]) + f"<td>{row[-1]}</td></tr>" for row in body
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


class Parts:
    """A section's body as it is built: HTML in page order, and the plots and tables in it."""

    def __init__(self) -> None:
        self.html: list[str] = []
        self.plots: list = []
        self.tables: list[Table] = []

    def add(self, text: str) -> None:
        """Append ready-made HTML (headings, notes)."""
        self.html.append(text)

    def plot(self, plot) -> None:
        """Append a figure (drawn now for the page; kept to be drawn again for a paper)."""
        self.plots.append(plot)
        self.html.append(plot.html())

    def table(self, table: Table) -> None:
        """Append a table."""
        self.tables.append(table)
        self.html.append(table.html())

    def section(self, id: str, title: str, note: str = "") -> Section:
        """The finished section (its note instead when nothing was added)."""
        return Section(id, title, "".join(self.html) or None, note, self.plots, self.tables)
