"""Self-contained HTML pages: the leaderboard and audit reports, one file each, readable offline.

Everything a page needs is inside it: styles, a few lines of script that make tables sortable (click a header, or
open the page with ``#sort=<column>:<asc|desc>``), and figures as base64 PNG. No external URL is loaded, so a page
can be mailed, archived or opened on a machine without network. Output depends only on the inputs (no clock).
"""
from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

from ..atomic import atomic_write
from .board import FEW_SEEDS
from .leaderboard import HEADER, leaderboard_boards

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #1b1f23; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: .8em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; }
th { background: #f6f8fa; white-space: nowrap; }
th.sortable { cursor: pointer; } th.sortable::after { content: " \\2195"; color: #8c959f; }
th[aria-sort=ascending]::after { content: " \\25B2"; color: #1b1f23; }
th[aria-sort=descending]::after { content: " \\25BC"; color: #1b1f23; }
div.scroll { overflow-x: auto; }
td.num { text-align: right; white-space: nowrap; } tfoot td { font-weight: 600; } tr.few-seeds td { background: #fff8c5; }
.note, .refs { color: #57606a; } figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-weight: 600; margin-bottom: .4em; } code { background: #f6f8fa; padding: 0 .25em; }
p.summary { font-size: 1.1em; padding: .6em .8em; background: #f6f8fa; border-left: 4px solid #0969da; }
"""

# Sort a table by a column: by the cell's data-sort value, else by its text; a value that reads as a number sorts as
# one (a leading "+" or a Unicode minus too), numbers before text, so a column mixing both still has one order.
# Stable, so ties keep their order. Rows in <tfoot> (a summary row) stay where they are.
SORT_JS = """
function fbKey(cell) {
  var v = cell.getAttribute("data-sort");
  var text = v === null ? cell.textContent.trim() : v;
  var n = v === null ? parseFloat(text.replace(/^\\+/, "").replace(/\\u2212/g, "-"))
                     : (v.trim() === "" ? NaN : Number(v));
  return isNaN(n) ? text.toLowerCase() : n;
}
function fbCompare(x, y) {
  if (typeof x !== typeof y) return typeof x === "number" ? -1 : 1;
  return x < y ? -1 : x > y ? 1 : 0;
}
function fbSort(table, col, dir) {
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    return fbCompare(fbKey(a.cells[col]), fbKey(b.cells[col])) * dir;
  });
  rows.forEach(function (r) { body.appendChild(r); });
  var ths = table.tHead.rows[0].cells;
  for (var i = 0; i < ths.length; i++) ths[i].removeAttribute("aria-sort");
  ths[col].setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
  table.setAttribute("data-sorted-by", ths[col].getAttribute("data-key") + ":" + (dir > 0 ? "asc" : "desc"));
}
document.addEventListener("DOMContentLoaded", function () {
  var m = /[#&]sort=([^:&]+)(?::(asc|desc))?/.exec(decodeURIComponent(location.hash));
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var ths = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(ths, function (th, col) {
      th.classList.add("sortable");
      th.addEventListener("click", function () {
        fbSort(table, col, th.getAttribute("aria-sort") === "ascending" ? -1 : 1);
      });
      if (m && th.getAttribute("data-key") === m[1]) fbSort(table, col, m[2] === "desc" ? -1 : 1);
    });
  });
  document.body.setAttribute("data-script", "ran");
});
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _inline_md(text: str) -> str:
    """Escape, then the bits of inline Markdown our generated texts use: `code`, **bold**, _emphasis_."""
    out = esc(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"(?<![\w/])_([^_]+)_(?![\w/])", r"<em>\1</em>", out)


def page(title: str, body: str) -> str:
    """A complete HTML document: inline styles and script, nothing fetched."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n<script>{SORT_JS}</script>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def _sort_attr(value: Any) -> str:
    if isinstance(value, float):
        value = "-Infinity" if value == -math.inf else "Infinity" if value == math.inf else repr(value)
    return f' data-sort="{esc(value)}"'


def table(titles: Sequence[str], rows: Iterable[dict[str, str]], sort_keys: Iterable[dict[str, Any]] | None = None,
          keys: dict[str, str] | None = None, numeric: Iterable[str] = (), row_classes: Iterable[str] | None = None,
          table_id: str | None = None, footer: Iterable[dict[str, str]] = ()) -> str:
    """A sortable table; ``sort_keys`` gives the value a cell sorts by, ``keys`` the column's name in ``#sort=``;
    ``footer`` rows (a summary) stay below the others whatever the order."""
    keys = keys or {}
    numeric = set(numeric)
    rows = list(rows)
    sort_keys = list(sort_keys) if sort_keys is not None else [{} for _ in rows]
    classes = list(row_classes) if row_classes is not None else ["" for _ in rows]
    head = "".join(f'<th scope="col" data-key="{esc(keys.get(t, _slug(t)))}">{esc(t)}</th>' for t in titles)

    def tr(row: dict[str, str], sort: dict[str, Any], cls: str) -> str:
        cells = "".join("<td" + (' class="num"' if t in numeric else "") + (_sort_attr(sort[t]) if t in sort else "")
                        + f">{esc(row.get(t, ''))}</td>" for t in titles)
        return (f'<tr class="{esc(cls)}">' if cls else "<tr>") + f"{cells}</tr>"

    body = [tr(row, sort, cls) for row, sort, cls in zip(rows, sort_keys, classes)]
    foot = [tr(row, {}, "") for row in footer]
    tfoot = "<tfoot>\n" + "\n".join(foot) + "\n</tfoot>\n" if foot else ""
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return (f'<div class="scroll"><table class="sortable"{ident}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(body) + "\n</tbody>\n" + tfoot + "</table></div>")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "col"


def png_img(png: bytes, alt: str) -> str:
    """An <img> carrying the PNG itself (base64 data URI)."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def markdown_block(md: str) -> str:
    """The small Markdown our generated files use: '#' headings, paragraphs and pipe tables."""
    out, para, pipe = [], [], []

    def flush() -> None:
        if para:
            out.append(f"<p>{_inline_md(' '.join(para))}</p>")
            para.clear()
        if pipe:
            rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in pipe]
            titles, body = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append(table(titles, [dict(zip(titles, r)) for r in body]))
            pipe.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            if para:
                flush()
            pipe.append(line)
            continue
        if pipe:
            flush()
        if not line.strip():
            flush()
        elif line.startswith("#"):
            flush()
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{_inline_md(line.lstrip('#').strip())}</h{level}>")
        else:
            para.append(line.strip())
    flush()
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- leaderboard

def _numeric_titles(board) -> set[str]:
    """Columns whose every row sorts by a number: right-aligned."""
    return {t for t in board.titles
            if board.sort_keys and all(isinstance(k.get(t), (int, float)) for k in board.sort_keys)}


def _figures(figures_dir: Path | None) -> list[str]:
    """Each PNG of the figures folder (sorted by name), with the table written beside it when there is one."""
    if figures_dir is None or not Path(figures_dir).is_dir():
        return []
    parts = []
    for png in sorted(Path(figures_dir).glob("*.png")):
        md = png.with_suffix(".md")
        caption = png.stem
        extra = ""
        if md.is_file():
            text = md.read_text(encoding="utf-8")
            first = text.splitlines()[0] if text.strip() else ""
            if first.startswith("#"):
                caption, text = first.lstrip("#").strip(), text[len(first):]
            extra = markdown_block(text)
        parts.append(f'<figure id="fig-{esc(_slug(png.stem))}">\n<figcaption>{esc(caption)}</figcaption>\n'
                     f"{png_img(png.read_bytes(), caption)}\n{extra}\n</figure>")
    return parts


def render_leaderboard_html(records: list, figures_dir: str | Path | None = None,
                            verified: Collection[tuple[str, str]] = ()) -> str:
    """The leaderboard as one HTML page: the same boards as ``leaderboard.md``, sortable, figures embedded."""
    boards = leaderboard_boards(records, verified)
    header = [line for line in HEADER.splitlines() if line.strip() and not line.startswith("<!--")]
    body = [f"<h1>{_inline_md(header[0].lstrip('#').strip())}</h1>"]
    body += [f'<p class="note">{_inline_md(line)}</p>' for line in header[1:]]
    body.append('<p class="note">Click a column title to sort; the page can also be opened with '
                "<code>#sort=delta_lp_mean:asc</code>.</p>")
    if not boards:
        body.append("<p><em>No results yet.</em></p>")
    for board in boards:
        anchor = _slug(board.task)
        body.append(f'<h2 id="{esc(anchor)}">{esc(board.task)} (version {board.version})</h2>')
        body.append(f"<p>{_inline_md(board.note)}</p>")
        if board.older:
            body.append(f'<p class="note">Older task versions, not ranked: {esc(board.older)}.</p>')
        classes = ["few-seeds" if r["Seeds"].endswith(FEW_SEEDS) else "" for r in board.rows]
        body.append(table(board.titles, board.rows, board.sort_keys, keys=board.keys, numeric=_numeric_titles(board),
                          row_classes=classes, table_id=f"board-{anchor}"))
        if board.few_seeds_note:
            body.append(f'<p class="note">{_inline_md(board.few_seeds_note)}</p>')
        if board.code_note:
            body.append(f'<p class="note">{_inline_md(board.code_note)}</p>')
        if board.citations:
            items = "".join(f"<li><strong>{esc(m)}</strong>: {esc(ref)}</li>" for m, ref in board.citations)
            body.append(f'<div class="refs">References:<ul>{items}</ul></div>')
    from ..reproduce.entries import ENTRIES  # the reproduction ledger of every entry the records touch
    from ..reproduce.ledger import ledgers_with_records, render_html
    body.append(render_html(ledgers_with_records(records, ENTRIES)))
    figures = _figures(Path(figures_dir) if figures_dir is not None else None)
    if figures:
        body.append('<h2 id="figures">Figures</h2>')
        body += figures
    return page("forgetbench leaderboard", "\n".join(body))


def write_leaderboard_html(records: list, path: str | Path, figures_dir: str | Path | None = None,
                           verified: Collection[tuple[str, str]] = ()) -> None:
    """Render and write atomically."""
    atomic_write(path, render_leaderboard_html(records, figures_dir, verified))
