"""HTML building blocks of the report: its stylesheet, escaping, tables, inline images and
number formats.  The page holds no script and loads nothing: every image is an inline
base64 PNG ``data:`` URI."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping

from pipeline.core.imaging import png_size

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 margin:0 auto;max-width:1200px;padding:0 18px 48px;color:#1d2430;background:#fff}
h1{font-size:24px;margin:22px 0 4px}h2{border-bottom:2px solid #dde3ea;padding-bottom:4px;margin-top:38px}
h3{margin:22px 0 6px;font-size:16px}code{background:#f3f6f9;padding:0 3px;border-radius:3px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #dde3ea;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f6f9}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
img.plot{max-width:100%;height:auto;display:block;margin:8px 0 22px;border:1px solid #eef1f4}
.v-ok{background:#d6f0da}td.best{font-weight:600;text-decoration:underline}
.wide{overflow-x:auto;max-width:100%}.wide table{font-size:12px}.wide td,.wide th{padding:2px 5px}.v-warn{background:#ffefbf}.v-fail{background:#ffd3d3;font-weight:600}
nav{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #dde3ea;z-index:1}
nav a{margin-right:14px}.note{color:#566170}dl.meta{display:grid;grid-template-columns:max-content 1fr;
 gap:2px 14px;margin:10px 0}dl.meta dt{font-weight:600}dl.meta dd{margin:0;word-break:break-all}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:18px}
figure.item{margin:0;border:1px solid #dde3ea;border-radius:6px;padding:10px;background:#fafbfc}
figure.item .views{display:flex;flex-wrap:wrap;gap:8px}
figure.item img{max-width:100%;height:auto;background:#000}
figure.item .tag{font-size:12px;color:#566170;margin:6px 0}
ul.legend{columns:2;font-size:11.5px;list-style:none;padding:0;margin:6px 0}
ul.legend li{break-inside:avoid}.sw{display:inline-block;width:10px;height:10px;margin-right:5px;
 border:1px solid #0004;vertical-align:-1px}
ol.qa{padding-left:20px;margin:6px 0}ol.qa>li{margin:8px 0}.question{margin:0;font-weight:600}
ol.options{margin:2px 0;padding-left:22px}ol.options li.correct{color:#12692b;font-weight:600}
.answer{margin:2px 0}.answer b{color:#12692b}.caption{font-style:italic;color:#374151;margin:4px 0}
"""


def esc(value) -> str:
    """``value`` as escaped HTML text (quotes too); None as empty."""
    return html.escape("" if value is None else str(value), quote=True)


def table(headers: list[str], rows: list[list], numeric: Iterable[int] = (),
          classes: Mapping[tuple[int, int], str] | None = None) -> str:
    """A table; cells in the ``numeric`` columns right-aligned, ``classes[(row, column)]`` added."""
    numeric = set(numeric)
    out = ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead><tbody>"]
    for r, row in enumerate(rows):
        cells = []
        for c, value in enumerate(row):
            cls = []
            if c in numeric:
                cls.append("n")
            if classes and (r, c) in classes:
                cls.append(classes[(r, c)])
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{esc(value)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def img_tag(png: bytes, alt: str, cls: str = "plot", attrs: str = "") -> str:
    """An inline ``<img>`` of ``png`` with its size (read from the PNG header)."""
    w, h = png_size(png)
    return (f'<img class="{cls}" src="{data_uri(png)}" alt="{esc(alt)}" width="{w}" height="{h}"'
            f"{attrs}>")


def data_uri(png: bytes) -> str:
    """``png`` as a base64 ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def fmt_count(x) -> str:
    """An integer with thousands separators."""
    return f"{int(x):,}"


def fmt_share(x) -> str:
    """A fraction as a percentage with one decimal; a dash for None."""
    return "—" if x is None else f"{100.0 * float(x):.1f} %"
