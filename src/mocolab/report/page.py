"""The HTML of the report: one self-contained page (inline CSS, no script, images beside it).
Every text that comes from a run is escaped here."""

from __future__ import annotations

import html
from urllib.parse import quote

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 1em 2em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; margin-top: 2em; } h3 { margin-top: 1.5em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.92em; color: #444; max-width: 1100px; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.diff td { background: #fff3b0; }
.side { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
.note { color: #7a4b00; background: #fff8e6; border-left: 4px solid #f0b400; padding: 4px 10px; margin: 0.5em 0; }
.muted { color: #666; font-size: 0.9em; } code { background: #f5f5f5; padding: 0 3px; }
details { margin: 0.4em 0; } summary { cursor: pointer; font-weight: 600; }
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def fmt(v) -> str:
    """A cell value as text: floats with 2 decimals (4 significant digits when small)."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if v != 0 and abs(v) < 0.01 else f"{v:.2f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    return str(v)


def table(headers: list[str], rows: list[list], row_class: list[str] | None = None) -> str:
    """An HTML table; numbers right-aligned; row_class: a CSS class per row ("" for none)."""
    out = ["<table>", "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{esc(row_class[i])}"' if row_class and row_class[i] else ""
        cells = "".join(f'<td class="num">{esc(fmt(v))}</td>' if isinstance(v, (int, float)) and not isinstance(v, bool)
                        else f"<td>{esc(fmt(v))}</td>" for v in row)
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def markdown(text: str) -> str:
    """The Markdown that mocolab writes (results.md, compare.md): pipe tables, paragraphs and
    bullet lines, as escaped HTML."""
    out, rows, items = [], [], []

    def flush():
        if rows:
            header, body = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append(table(header, body))
            rows.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|"):
            if items:
                flush()
            rows.append([c.strip() for c in s.strip("|").split("|")])
        elif s.startswith(("- ", "* ")):
            if rows:
                flush()
            items.append(s[2:])
        else:
            flush()
            if s:
                out.append(f"<p>{esc(s)}</p>")
    flush()
    return "\n".join(out)


def figure(src: str, caption: str, alt: str) -> str:
    return (f'<figure><img src="{esc(quote(src))}" alt="{esc(alt)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def details(title: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(title)}</summary>\n{body}\n</details>"


def document(title: str, subtitle: str, sections: list[tuple[str, str]]) -> str:
    """sections: (heading, HTML body) -> the page; a table of contents links the headings."""
    toc = "".join(f'<li><a href="#s{i}">{esc(h)}</a></li>' for i, (h, _) in enumerate(sections))
    body = "\n".join(f'<h2 id="s{i}">{esc(h)}</h2>\n{b}' for i, (h, b) in enumerate(sections))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{esc(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n"
            f'<p class="muted">{esc(subtitle)}</p>\n<ul>{toc}</ul>\n{body}\n</body>\n</html>\n')
