"""One report, two renderings: a list of blocks becomes report.md and a self-contained report.html.

    doc = [Heading(1, "run"), Para("**accuracy 0.812** over 10 folds"), Table(["a", "b"], [["1", "2"]]),
           Image("accuracy per fold", "fold_scores.png")]
    to_markdown(doc)           # images as relative links, as before
    to_html(doc, run_dir)      # images embedded as base64 data: URIs, a small inline stylesheet

Text in a block may use three inline marks, the same in both renderings: **bold**, `code` and
[label](href). Everything else is text: escaped in HTML; in Markdown table cells `|` is escaped.
Both renderers walk the same blocks, so the two files cannot say different things.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Note:
    """A warning or remark set apart (Markdown: a quote; HTML: a shaded box)."""

    text: str
    warning: bool = False


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Image:
    alt: str
    file: str  # a PNG in the run folder


Block = Heading | Para | Note | Bullets | Table | Image


def cell(value) -> str:
    """A table cell's text: floats to 3 decimals, None as a dash."""
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


# ---- Markdown ----


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: list[Block]) -> str:
    out: list[str] = []
    for b in doc:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Note):
            out.append(f"> {b.text}")
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(map(_md_cell, b.headers)) + " |", "|" + "---|" * len(b.headers)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, Image):
            out.append(f"![{b.alt}]({b.file})")
        else:
            raise TypeError(f"not a report block: {b!r}")
        out.append("")
    return "\n".join(out)


# ---- HTML ----

_INLINE = re.compile(r"\*\*(?P<bold>.+?)\*\*|`(?P<code>[^`]+)`|\[(?P<label>[^\]]+)\]\((?P<href>[^)\s]+)\)")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #eee; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; font-size: .92em; word-break: break-all; }
.note { border-left: 4px solid #999; background: #f6f6f6; padding: .4em .8em; margin: .8em 0; }
.warning { border-left-color: #c62828; background: #fdecea; }
img { max-width: 100%; height: auto; display: block; margin: .6em 0; }
""".strip()


def inline_html(text: str) -> str:
    """Text with its **bold**, `code` and [label](href) marks as HTML, the rest escaped."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos : m.start()]))
        if m["bold"] is not None:
            out.append(f"<strong>{inline_html(m['bold'])}</strong>")
        elif m["code"] is not None:
            out.append(f"<code>{html.escape(m['code'])}</code>")
        else:
            out.append(f'<a href="{html.escape(m["href"], quote=True)}">{html.escape(m["label"])}</a>')
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _data_uri(path: Path) -> str | None:
    try:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None


def to_html(doc: list[Block], run_dir, title: str) -> str:
    """A standalone page: no file it refers to by src= (images are data: URIs), so MLflow's
    artifact view, a mail attachment or a browser shows it whole."""
    body: list[str] = []
    for b in doc:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{inline_html(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{inline_html(b.text)}</p>")
        elif isinstance(b, Note):
            body.append(f'<div class="note{" warning" if b.warning else ""}">{inline_html(b.text)}</div>')
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{inline_html(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Image):
            uri = _data_uri(Path(run_dir) / b.file)
            body.append(
                f'<img alt="{html.escape(b.alt, quote=True)}" src="{uri}">'
                if uri
                else f"<p><em>({html.escape(b.alt)}: {html.escape(b.file)} is missing)</em></p>"
            )
        else:
            raise TypeError(f"not a report block: {b!r}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
