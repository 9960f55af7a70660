"""report.html: a study's report.md as one self-contained page.

    html = render_report_html(report_md_text, study_dir)   # text; reads the figures it links
    path = write_report_html(study_dir)                     # STUDY/report.html, written atomically

The page opens from disk in a browser, with no server and nothing fetched: every figure the report
links (figures/NAME.png) is embedded as a base64 data URI, the style sheet and the few lines of
script that sort a table by the column whose header is clicked are inline, and a Content Security
Policy forbids loading anything else.

The converter reads the subset of Markdown that report.md is written in: ATX headings, paragraphs,
`-`/`*` and numbered lists, pipe tables, fenced code blocks, images, and inline code, links,
**bold** and *italic*. Anything else is kept as text (escaped), so no Markdown dependency is
needed for it.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

from scaling.analysis.errors import DataError
from scaling.contracts import write_atomic

REPORT_MD = "report.md"
REPORT_HTML = "report.html"

# Nothing may be loaded from outside the file: images only as data URIs, style and script inline.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1, h2, h3 { line-height: 1.2; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
code { font: 0.9em ui-monospace, monospace; background: #f4f4f4; padding: 0 0.2em; }
pre { background: #f4f4f4; padding: 0.6em; overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { display: inline-block; margin: 0.5rem; vertical-align: top; }
figure img { max-width: 100%; width: 34rem; } figcaption { text-align: center; color: #555; }
.missing { color: #a00; }
"""

# Click a header to sort its table by that column; click again to reverse. Cells that read as
# numbers (1e+15, -0.29%, 1,024) sort as numbers, others as text; blanks and n/a go last.
_SCRIPT = """
(function () {
  function key(cell) {
    var t = cell.textContent.trim();
    var n = Number(t.replace(/[%,]/g, ""));
    return t === "" || isNaN(n) ? t : n;
  }
  function blank(v) { return v === "" || v === "n/a" || v === "None"; }
  function compare(a, b) {
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b), undefined, {numeric: true});
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var body = table.tBodies[0], headers = table.querySelectorAll("thead th");
    Array.prototype.forEach.call(body.rows, function (row, i) { row.dataset.order = i; });
    headers.forEach(function (th, col) {
      th.title = "sort by this column";
      th.addEventListener("click", function () {
        var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r, s) {  // blanks last either way; ties keep the report's order
          var a = key(r.cells[col]), b = key(s.cells[col]);
          return (blank(a) - blank(b)) || (blank(a) ? 0 : dir * compare(a, b)) || r.dataset.order - s.dataset.order;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+(.*)$")
_IMAGE_ONLY = re.compile(r"^\s*!\[([^\]]*)\]\(([^)\s]+)\)\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


# ---------------------------------------------------------------------------------------------
# Inline Markdown


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _image(alt: str, src: str, study_dir: Path) -> str:
    """An <img> holding the file's bytes, or a visible note when the file cannot be embedded."""
    path = (study_dir / src).resolve()
    inside = not re.match(r"^[a-z][a-z0-9+.-]*:", src, re.I) and path.is_relative_to(study_dir.resolve())
    if not (inside and path.is_file()):
        return f'<span class="missing">[figure {html.escape(alt)}: {html.escape(src)} is not in the study folder]</span>'
    return f'<img alt="{html.escape(alt)}" src="{_data_uri(path)}">'


def _inline(text: str, study_dir: Path) -> str:
    """Escape `text` and render its inline Markdown. Code spans are cut out first, so nothing
    inside them is read as Markdown."""
    out = []
    for piece in re.split(r"(`[^`]+`)", text):
        if len(piece) >= 2 and piece.startswith("`") and piece.endswith("`"):
            out.append(f"<code>{html.escape(piece[1:-1])}</code>")
            continue
        s = html.escape(piece, quote=False)
        s = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", lambda m: _image(html.unescape(m[1]), html.unescape(m[2]), study_dir), s)
        s = re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", lambda m: _link(m[1], html.unescape(m[2])), s)
        s = re.sub(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<![*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])", r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


def _link(label: str, href: str) -> str:
    # A link is kept as a link (it fetches nothing until clicked); javascript: URLs are not.
    if href.lower().startswith("javascript:"):
        return label
    return f'<a href="{html.escape(href)}">{label}</a>'


# ---------------------------------------------------------------------------------------------
# Blocks


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


def _table(lines: list[str], study_dir: Path) -> str:
    headers = _cells(lines[0])
    head = "".join(f"<th>{_inline(h, study_dir)}</th>" for h in headers)
    out = ['<table class="sortable">', f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for line in lines[2:]:
        cells = _cells(line)
        cells = (cells + [""] * len(headers))[: len(headers)]
        out.append("<tr>" + "".join(f"<td>{_inline(c, study_dir)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _is_table_start(lines: list[str], i: int) -> bool:
    return "|" in lines[i] and i + 1 < len(lines) and bool(_TABLE_RULE.match(lines[i + 1])) and "|" in lines[i + 1]


def _block_start(lines: list[str], i: int) -> bool:
    line = lines[i]
    return bool(_HEADING.match(line) or _BULLET.match(line) or _NUMBERED.match(line) or _FENCE.match(line)
                or _is_table_start(lines, i))  # fmt: skip


def markdown_to_html(text: str, study_dir: Path | str = ".") -> str:
    """The body HTML of Markdown `text` (the subset in the module's docstring); images are read
    relative to `study_dir`."""
    study_dir = Path(study_dir)
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := _FENCE.match(line):
            fence, body = m[1], []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence):
                body.append(lines[i])
                i += 1
            i += 1  # the closing fence
            out.append("<pre><code>" + html.escape("\n".join(body)) + "</code></pre>")
        elif m := _HEADING.match(line):
            level = len(m[1])
            out.append(f"<h{level}>{_inline(m[2], study_dir)}</h{level}>")
            i += 1
        elif _is_table_start(lines, i):
            j = i + 2
            while j < len(lines) and lines[j].strip() and "|" in lines[j]:
                j += 1
            out.append(_table(lines[i:j], study_dir))
            i = j
        elif _BULLET.match(line) or _NUMBERED.match(line):
            ordered = not _BULLET.match(line)
            pattern = _NUMBERED if ordered else _BULLET
            items: list[str] = []
            while i < len(lines) and lines[i].strip():
                if m := pattern.match(lines[i]):
                    items.append(m[1])
                elif items and lines[i].startswith((" ", "\t")):
                    items[-1] += " " + lines[i].strip()  # an item continued on the next line
                else:
                    break
                i += 1
            tag = "ol" if ordered else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{_inline(t, study_dir)}</li>" for t in items) + f"</{tag}>")
        else:
            para = [line]
            i += 1
            while i < len(lines) and lines[i].strip() and not _block_start(lines, i):
                para.append(lines[i])
                i += 1
            if all(_IMAGE_ONLY.match(p) for p in para):  # a block of figures: one <figure> each
                for p in para:
                    alt, src = _IMAGE_ONLY.match(p).groups()  # type: ignore[union-attr]
                    caption = f"<figcaption>{html.escape(alt)}</figcaption>"
                    out.append(f"<figure>{_image(alt, src, study_dir)}{caption}</figure>")
            else:
                out.append("<p>" + _inline("\n".join(p.strip() for p in para), study_dir) + "</p>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The page


def render_report_html(report_md_text: str, study_dir: Path | str) -> str:
    """report.md's text as a self-contained HTML page; the figures it links are read from
    `study_dir` and embedded."""
    title = next((m[2] for line in report_md_text.splitlines() if (m := _HEADING.match(line)) and len(m[1]) == 1),
                 "Scaling study report")  # fmt: skip
    title = re.sub(r"[`*]", "", title)
    body = markdown_to_html(report_md_text, study_dir)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        body,
        f"<script>{_SCRIPT}</script>",
        "</body>",
        "</html>",
        "",
    ])  # fmt: skip


def write_report_html(study_dir: Path | str) -> Path:
    """Read STUDY/report.md and the figures it links; write STUDY/report.html atomically (a reader
    sees the old page or the new, never half). Returns its path."""
    study_dir = Path(study_dir)
    md = study_dir / REPORT_MD
    if not md.is_file():
        raise DataError(f"{md} does not exist; write the study's report first (scaling-study writes it when the study's runs have ended)")
    path = study_dir / REPORT_HTML
    write_atomic(path, render_report_html(md.read_text(encoding="utf-8"), study_dir))
    return path
