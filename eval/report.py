"""Reports: one self-contained HTML page per run, and the small pieces every output shares.

`write_report` inlines everything (PNG as base64, charts as SVG, CSS in a style tag; no scripts, no links), so the
file can be mailed, attached to an issue or opened offline and always shows the same thing. `format_numbers` prints
numbers beside their definitions, `jsonable` and `save_png` write JSON and PNG outputs (atomically), and
`machine_description` says where numbers were measured. The benchmark's tables and plots are eval.results'.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import asdict, is_dataclass
from html import escape
from pathlib import Path

from PIL import Image

from erasure.files import write_atomic

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


def format_numbers(numbers: dict, definitions: dict[str, str]) -> str:
    """One line per top-level number, `name = value   (its definition)`, floats to 4 significant digits."""
    lines = []
    for key, value in numbers.items():
        if key in ("definitions", "per_concept") or isinstance(value, dict):
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:>18} = {shown}   ({definitions.get(key, '')})")
    return "\n".join(lines)


def html_table(rows: list[dict]) -> str:
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


def png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _bar_chart(values: dict[str, float], bar_width: int = 300, row_height: int = 20) -> str:
    """Horizontal bars from a zero line, scaled to the largest magnitude: positive values to the right, negative
    ones (when there are any) to the left; NaN draws no bar. The value is printed beside each bar."""
    finite = [v for v in values.values() if not math.isnan(v)]
    top = max([abs(v) for v in finite if v != 0], default=1.0)
    has_negative = any(v < 0 for v in finite)
    label_width = 8 * max((len(label) for label in values), default=0) + 10
    left = bar_width if has_negative else 0  # room for negative bars
    zero = label_width + left + (50 if has_negative else 0)
    width, height = zero + bar_width + 70, row_height * len(values) + 4
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for i, (label, value) in enumerate(values.items()):
        y = 2 + i * row_height
        length = 0.0 if math.isnan(value) else abs(value) / top * bar_width
        x = zero - length if value < 0 else zero
        text_x = (x - 4) if value < 0 else (zero + length + 4)
        anchor = "end" if value < 0 else "start"
        colour = "#c0504d" if value < 0 else "#4a78b5"
        parts.append(
            f'<text x="{label_width - 6}" y="{y + row_height * 0.7:.1f}" text-anchor="end" font-size="12">'
            f"{escape(label)}</text>"
            f'<rect x="{x:.1f}" y="{y + 2}" width="{length:.1f}" height="{row_height - 4}" fill="{colour}"/>'
            f'<text x="{text_x:.1f}" y="{y + row_height * 0.7:.1f}" text-anchor="{anchor}" font-size="12">'
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
    tables: dict[str, list[dict]] | None = None,
    html: str = "",
) -> Path:
    """Write the report to `path` atomically (temp file + rename: a reader never sees half a report).

    `tables` adds named tables after the results; `html` is a ready fragment (an audit section) put after them."""
    sections = [f"<h1>{escape(title)}</h1>", "<h2>Results</h2>", html_table(table)]
    for name, rows in (tables or {}).items():
        sections += [f"<h3>{escape(name)}</h3>", html_table(rows)]
    if html:
        sections.append(html)
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
                f'<figure><img src="{png_data_uri(image)}" alt="{escape(name)}" width="{image.width}" '
                f'height="{image.height}"><figcaption>{escape(name)}</figcaption></figure>'
            )
    document = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    return write_atomic(path, document)


def jsonable(value):
    """`value` as plain JSON types: dataclasses as dicts, anything else unknown as its string."""
    return json.loads(json.dumps(value, default=lambda v: asdict(v) if is_dataclass(v) else str(v)))


def save_png(image: Image.Image, path: Path) -> Path:
    """Write a PNG atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_atomic(path, buffer.getvalue())


def machine_description(device, threads: int) -> str:
    """The machine the numbers were measured on, in words: the GPU's name, or the CPU and its thread count."""
    import os
    import platform

    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({torch.cuda.device_count()} visible)"
    return f"CPU ({platform.processor() or platform.machine()}), {threads} torch thread(s), {os.cpu_count()} cores"
