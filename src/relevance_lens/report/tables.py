"""The report's HTML pieces: tables, formatted cells with significance marks, and the
:class:`Section` every part of the page is made of."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
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
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return html.escape("-" if value is None else str(value))


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
