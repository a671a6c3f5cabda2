"""Pieces of one self-contained HTML page (the run report): escaped text, tables, figures embedded as
base64 PNG, inline CSS and no script, so the file opens offline anywhere and shows user data as text.

Every string that reaches the page goes through `escape` (labels, file names and texts are user data);
the only markup is what this module writes.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; }
th { background: #f4f4f4; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; white-space: pre-wrap; }
img.figure { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
img.thumb { width: 96px; height: auto; image-rendering: pixelated; }
.note { color: #666; font-size: 0.9em; }
""".strip()


@dataclass(frozen=True)
class Section:
    """One part of the page: a heading (plain text) and its body (markup built with this module)."""

    title: str
    body: str
    anchor: str  # the section's id, for the table of contents and for tests


def escape(value: Any) -> str:
    """Any value as text the page shows literally (quotes too: it may land in an attribute)."""
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 4) -> str:
    """A number for a table cell: integers as they are, floats to `digits` significant places."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return escape(value)
    return str(value) if isinstance(value, int) else f"{value:.{digits}g}"


def table(header: Sequence[str] | None, rows: Iterable[Sequence[Any]], raw: bool = False) -> str:
    """A table of escaped cells (numbers right-aligned), with a header row unless None; `raw` keeps cells that
    are already markup."""
    head = "" if header is None else f"<thead><tr>{''.join(f'<th>{escape(h)}</th>' for h in header)}</tr></thead>"
    lines = []
    for row in rows:
        cells = []
        for cell in row:
            numeric = isinstance(cell, int | float) and not isinstance(cell, bool)
            text = number(cell) if numeric else str(cell) if raw else escape(cell)
            cells.append(f'<td class="n">{text}</td>' if numeric else f"<td>{text}</td>")
        lines.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table>{head}<tbody>{''.join(lines)}</tbody></table>"


def paragraph(text: str, note: bool = False) -> str:
    return f'<p class="note">{escape(text)}</p>' if note else f"<p>{escape(text)}</p>"


def preformatted(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def png_image(data: bytes, alt: str, css: str = "figure") -> str:
    """PNG bytes as an inline image."""
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img class="{css}" alt="{escape(alt)}" src="data:image/png;base64,{encoded}">'


def figure(fig: Any, alt: str, dpi: int = 90) -> str:
    """A matplotlib figure as an inline PNG; the figure is closed."""
    from graftune.plots import png

    return png_image(png(fig, dpi), alt)


def page(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """The whole document: a title, a table of contents and the sections, with the CSS inline."""
    contents = "".join(f'<li><a href="#{escape(s.anchor)}">{escape(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{escape(s.anchor)}"><h2>{escape(s.title)}</h2>{s.body}</section>'
                   for s in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>"
            f"{paragraph(subtitle, note=True) if subtitle else ''}<nav><ul>{contents}</ul></nav>{body}</body></html>\n")
