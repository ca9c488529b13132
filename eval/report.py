"""One self-contained HTML report: metrics table, how each number was computed, images and bar charts.

Everything is inline (PNG as base64, charts as SVG, CSS in a style tag; no scripts, no links), so the file can be
mailed, attached to an issue or opened offline and always shows the same thing.
"""

from __future__ import annotations

import base64
import io
import math
import os
import tempfile
from html import escape
from pathlib import Path

from PIL import Image

CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.7em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #eee; }
dt { font-weight: bold; margin-top: 0.5em; }
figure { margin: 1em 0; }
img { image-rendering: pixelated; }
"""


def format_value(value) -> str:
    """How a table cell prints: floats with 2 decimals (3 significant digits below 0.01), NaN as n/a."""
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if 0 < abs(value) < 0.01 else f"{value:.2f}"
    return str(value)


def _table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c, "")
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            cells.append(f"<td{' class=num' if numeric else ''}>{escape(format_value(value))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _bar_chart(values: dict[str, float], bar_width: int = 300, row_height: int = 20) -> str:
    """Horizontal bars scaled to the largest value (negative and NaN values draw no bar), value printed beside."""
    finite = [v for v in values.values() if not math.isnan(v)]
    top = max([v for v in finite if v > 0], default=1.0)
    label_width = 8 * max((len(label) for label in values), default=0) + 10
    width, height = label_width + bar_width + 70, row_height * len(values) + 4
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for i, (label, value) in enumerate(values.items()):
        y = 2 + i * row_height
        length = 0.0 if math.isnan(value) else max(value, 0.0) / top * bar_width
        parts.append(
            f'<text x="{label_width - 6}" y="{y + row_height * 0.7:.1f}" text-anchor="end" font-size="12">'
            f"{escape(label)}</text>"
            f'<rect x="{label_width}" y="{y + 2}" width="{length:.1f}" height="{row_height - 4}" fill="#4a78b5"/>'
            f'<text x="{label_width + length + 4:.1f}" y="{y + row_height * 0.7:.1f}" font-size="12">'
            f"{escape(format_value(float(value)))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def write_report(
    path,
    title: str,
    table: list[dict],
    definitions: dict[str, str],
    images: dict[str, Image.Image] | None = None,
    bars: dict[str, dict[str, float]] | None = None,
) -> Path:
    """Write the report to `path` atomically (temp file + rename: a reader never sees half a report)."""
    sections = [f"<h1>{escape(title)}</h1>", "<h2>Results</h2>", _table(table)]
    if bars:
        sections.append("<h2>Charts</h2>")
        for name, values in bars.items():
            sections.append(f"<figure>{_bar_chart(values)}<figcaption>{escape(name)}</figcaption></figure>")
    sections.append("<h2>How each number was computed</h2><dl>")
    sections += [f"<dt>{escape(name)}</dt><dd>{escape(text)}</dd>" for name, text in definitions.items()]
    sections.append("</dl>")
    if images:
        sections.append("<h2>Images</h2>")
        for name, image in images.items():
            sections.append(
                f'<figure><img src="{_png_data_uri(image)}" alt="{escape(name)}" width="{image.width}" '
                f'height="{image.height}"><figcaption>{escape(name)}</figcaption></figure>'
            )
    document = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(document)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
