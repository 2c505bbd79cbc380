"""The self-contained HTML page of a study report (see :mod:`qsm.report`).

One file with inline CSS, inline JavaScript (click a column header to sort;
numbers sort as numbers) and the figures embedded as ``data:`` URIs. It loads
nothing from anywhere: no web font, no script or style sheet from a CDN.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

__all__ = ["render_html"]

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1d2329; max-width: 1180px; margin: 0 auto; padding: 1.5em 2em 4em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #2b5d8a; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 2em; color: #2b5d8a; }
nav { background: #f3f6f9; padding: .6em 1em; border-radius: 6px; font-size: .92em; }
nav a { margin-right: 1.1em; color: #2b5d8a; text-decoration: none; }
code { background: #f1f3f5; padding: 0 .25em; border-radius: 3px; font-size: .92em; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; border-radius: 6px;
      font-size: .85em; line-height: 1.35; }
.scroll { overflow-x: auto; margin: .6em 0 1.2em; }
table { border-collapse: collapse; font-size: .88em; }
th, td { padding: .28em .7em; border-bottom: 1px solid #dde3e8; vertical-align: top; }
th, td.num { white-space: nowrap; } td { max-width: 32em; }
th { background: #eef2f6; position: sticky; top: 0; cursor: pointer; user-select: none;
     text-align: left; }
th::after { content: " \\2195"; color: #9aa7b4; font-size: .8em; }
th.asc::after { content: " \\2191"; color: #1d2329; } th.desc::after { content: " \\2193";
     color: #1d2329; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; } tbody tr:hover { background: #fff6d9; }
figure { margin: 1.2em 0 2em; } figure img { max-width: 100%; height: auto;
     border: 1px solid #e3e7eb; } figcaption { font-size: .9em; color: #4a5561; margin-top: .4em; }
.note { font-size: .85em; color: #5b6670; }
"""

_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = !th.classList.contains("asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(asc ? "asc" : "desc");
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort, r;
        if (x !== undefined && y !== undefined) { r = parseFloat(x) - parseFloat(y); }
        else if (x !== undefined) { r = -1; } else if (y !== undefined) { r = 1; }
        else { r = a.cells[col].textContent.localeCompare(b.cells[col].textContent,
                                                          undefined, {numeric: true}); }
        return asc ? r : -r;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _inline(text: str) -> str:
    """Escape, then the Markdown subset of the report: `code`, **bold**, *italic*."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", out)


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def _table(t) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = []
    for row, keys in zip(t.rows, t.keys):
        cells = []
        for text, key in zip(row, keys):
            if key is None:
                cells.append(f"<td>{html.escape(text)}</td>")
            else:
                cells.append(f'<td class="num" data-sort="{key!r}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    name = f' id="table-{html.escape(t.name)}"' if t.name else ""
    return (f'<div class="scroll"><table class="sortable"{name}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _figure(f, report_dir: Path) -> str:
    data = base64.b64encode(Path(f.path).read_bytes()).decode("ascii")
    links = ", ".join(f'<a href="{html.escape(_relative(p, report_dir))}">'
                      f"{p.suffix[1:].upper()}</a>" for p in f.others)
    also = f" Files: {links}." if links else ""
    return (f'<figure id="figure-{html.escape(f.name)}"><img alt="{html.escape(f.name)}" '
            f'src="data:image/png;base64,{data}"><figcaption><strong>{html.escape(f.name)}'
            f"</strong>. {_inline(f.caption)}{also}</figcaption></figure>")


def _relative(path: Path, folder: Path) -> str:
    try:
        return Path(path).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_uri()


def render_html(sections, *, title: str, report_dir: Path) -> str:
    """The whole page as one string (sections from :func:`qsm.report.report_sections`)."""
    from qsm.report import Figure, Table

    nav = " ".join(f'<a href="#{_anchor(s.title)}">{html.escape(s.title)}</a>'
                   for s in sections if s.level > 1)
    body = []
    for i, s in enumerate(sections):
        tag = f"h{min(s.level, 3)}"
        body.append(f'<{tag} id="{_anchor(s.title)}">{html.escape(s.title)}</{tag}>')
        for b in s.blocks:
            if isinstance(b, Table):
                body.append(_table(b))
            elif isinstance(b, Figure):
                body.append(_figure(b, report_dir))
            elif isinstance(b, tuple):
                body.append(f"<pre><code>{html.escape(b[1])}</code></pre>")
            else:
                body.append(f"<p>{_inline(b)}</p>")
        if i == 0:
            body.append(f"<nav>{nav}</nav>")
    body.append('<p class="note">Click a column header to sort a table. This page is '
                "self-contained: figures are embedded, nothing is loaded from the network.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + f"\n<script>{_JS}</script>\n</body></html>\n")
