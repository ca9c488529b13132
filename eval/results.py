"""The benchmark's tables and plots: results.json / .csv / .md (means over concepts per kind, then one table per
concept) and PIL charts (a bar chart per metric, a UA-versus-IRA scatter, metric-against-k lines), every file
written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from erasure.files import write_atomic
from eval.report import format_value, jsonable, save_png

# --- the benchmark's tables and plots ------------------------------------------------------------------------
# Summary columns: (record key, column label). Means over concepts.
COLUMNS = (
    ("ua", "UA"),
    ("ira", "IRA"),
    ("cra", "CRA"),
    ("mean", "mean(UA,IRA,CRA)"),
    ("alias_ua", "alias UA"),
    ("fd", "FD"),
    ("seconds", "seconds"),
    ("peak_memory_mb", "peak memory (MB)"),
    ("storage_mb", "storage (MB)"),
)
CSV_FIELDS = (
    "method",
    "concept",
    "kind",
    "anchor",
    "ua",
    "ira",
    "cra",
    "mean",
    "alias_ua",
    "fd",
    "base_fd",
    "clip_score",
    "base_clip_score",
    "clip_accuracy",
    "base_ua",
    "base_ira",
    "base_cra",
    "seconds",
    "peak_memory_bytes",
    "storage_bytes",
    "steps",
    "seed",
)
DEFINITIONS = {
    "mean": "(UA + IRA + CRA) / 3 for one cell; in summaries, the mean of that over concepts",
    "seconds": "wall-clock seconds of the erasure (anchor generation + training or closed form), evaluation excluded",
    "peak_memory_bytes": "peak memory of the erasure as erasure.engine measures it (see memory_definition)",
    "peak_memory_mb": "peak_memory_bytes / 2^20",
    "storage_bytes": "bytes of the cell's delta.safetensors (only the tensors the erasure changed)",
    "storage_mb": "storage_bytes / 2^20",
    "gap_to_doco": "the method's mean(UA,IRA,CRA) minus DoCo's, over the same concepts (negative: behind DoCo)",
    "summary": "summary rows are means over the concepts of that kind; NaN values are left out of a mean",
}
PALETTE = [(74, 120, 181), (214, 96, 77), (96, 168, 96), (148, 103, 189), (230, 160, 40), (90, 90, 90)]


# --- results -----------------------------------------------------------------------------------------------------
def nan_mean(values) -> float:
    """The mean of the values that are numbers (None and NaN left out); NaN when none is."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(values) / len(values) if values else math.nan


def summary(records: list[dict], methods: list[str]) -> list[dict]:
    """One row per method: the mean over its concepts of every summary column (+ the gap to DoCo's mean)."""
    rows = []
    for method in methods:
        mine = [r for r in records if r["method"] == method]
        if not mine:
            continue
        row = {"method": method, "concepts": len(mine)}
        for key, _ in COLUMNS:
            row[key] = nan_mean(_value(r, key) for r in mine)
        rows.append(row)
    doco = next((r for r in rows if r["method"] == "doco"), None)
    if doco is not None:
        for row in rows:
            row["gap_to_doco"] = row["mean"] - doco["mean"]
    return rows


def _value(record: dict, key: str) -> float:
    if key == "peak_memory_mb":
        return record["peak_memory_bytes"] / 2**20
    if key == "storage_mb":
        return record["storage_bytes"] / 2**20
    return record[key]


def _md_table(rows: list[dict], first: str = "method") -> str:
    keys = (
        [first] + [k for k, _ in COLUMNS] + (["gap_to_doco"] if any("gap_to_doco" in r for r in rows) else [])
    )
    labels = {k: label for k, label in COLUMNS} | {"method": "method", "gap_to_doco": "gap to DoCo (mean)"}
    lines = ["| " + " | ".join(labels[k] for k in keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = []
        for k in keys:
            value = row.get(k, "")
            if k == "gap_to_doco" and row.get("method") == "doco":
                value = "-"
            cells.append(format_value(float(value)) if isinstance(value, (int, float)) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(records: list[dict], methods: list[str], meta: dict) -> str:
    parts = ["# Benchmark results", ""]
    if meta.get("command"):
        parts += [f"Produced by `{meta['command']}`.", ""]
    ev = meta.get("eval", {})
    seeds, steps, guidance = (
        list(ev.get("seeds", [])),
        ev.get("num_inference_steps"),
        ev.get("guidance_scale"),
    )
    about = (
        f"Model: {meta.get('model') or 'unknown'}; answer set: every style x object prompt, seeds {seeds}, "
    )
    about += f"DDIM {steps} steps, guidance {guidance}; numbers in %, except FD, seconds and MB."
    parts += [about, ""]
    for kind, title in (("style", "Styles"), ("object", "Objects")):
        mine = [r for r in records if r["kind"] == kind]
        if mine:
            n = len({r["concept"] for r in mine})
            parts += [f"## {title}: means over {n} concepts", "", _md_table(summary(mine, methods)), ""]
    if len({r["kind"] for r in records}) > 1:
        n = len({r["concept"] for r in records})
        parts += [f"## All: means over {n} concepts", "", _md_table(summary(records, methods)), ""]
    parts += ["## Per concept", ""]
    for concept in dict.fromkeys(r["concept"] for r in records):
        mine = [r for r in records if r["concept"] == concept]
        first = mine[0]
        rows = summary(mine, methods)
        parts += [f"### {concept} ({first['kind']}, anchor {first['anchor']})", "", _md_table(rows), ""]
    parts += ["## Definitions", ""]
    definitions = {}
    for r in records:
        definitions.update({k: v for k, v in r.get("definitions", {}).items() if k not in definitions})
    definitions.update(DEFINITIONS)
    labels = {k: label for k, label in COLUMNS}
    for key, text in definitions.items():
        parts.append(f"- **{labels.get(key, key)}**: {text}")
    return "\n".join(parts) + "\n"


def write_results(out: Path, records: list[dict], methods: list[str], meta: dict) -> None:
    """results.json, results.csv, results.md and the plots, each written atomically."""
    out = Path(out)
    document = {**meta, "definitions": DEFINITIONS, "records": records}
    write_atomic(out / "results.json", json.dumps(jsonable(document), indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    write_atomic(out / "results.csv", buffer.getvalue())
    write_atomic(out / "results.md", markdown(records, methods, meta))
    for kind, name in (("style", "styles"), ("object", "objects")):
        mine = [r for r in records if r["kind"] == kind]
        if not mine:
            continue
        rows = summary(mine, methods)
        for key, label in COLUMNS:
            values = {row["method"]: row[key] for row in rows}
            save_png(
                bar_chart(f"{label}, {name} (mean over concepts)", values),
                out / "plots" / f"{name}-{key}.png",
            )
        save_png(scatter(mine, methods, f"UA vs IRA, {name}"), out / "plots" / f"{name}-ua_vs_ira.png")


# --- plots (PIL only) --------------------------------------------------------------------------------------------
def _colour(methods: list[str], method: str):
    return PALETTE[methods.index(method) % len(PALETTE)] if method in methods else PALETTE[-1]


def bar_chart(title: str, values: dict[str, float], bar_width: int = 320, row: int = 26) -> Image.Image:
    """Horizontal bars, one per method, scaled to the largest value; the value printed beside each bar."""
    font = ImageFont.load_default()
    methods = list(values)
    label_w = 8 + max(
        [ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(m, font=font) for m in methods] + [0]
    )
    width, height = int(label_w) + bar_width + 90, 30 + row * len(methods) + 8
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((6, 6), title, fill="black", font=font)
    finite = [v for v in values.values() if not math.isnan(v)]
    top = max([abs(v) for v in finite] + [1e-12])
    for i, (method, value) in enumerate(values.items()):
        y = 30 + i * row
        draw.text((6, y + row // 2 - 6), method, fill="black", font=font)
        x0 = int(label_w) + 4
        length = 0 if math.isnan(value) else abs(value) / top * bar_width
        draw.rectangle([x0, y + 3, x0 + max(1, int(length)), y + row - 5], fill=_colour(methods, method))
        draw.text(
            (x0 + int(length) + 6, y + row // 2 - 6), format_value(float(value)), fill="black", font=font
        )
    return image


def scatter(records: list[dict], methods: list[str], title: str, size: int = 360) -> Image.Image:
    """UA (x) against IRA (y), 0-100 each: a small dot per (method, concept), a ringed large dot per method mean."""
    font = ImageFont.load_default()
    left, top, legend = 44, 40, 120
    image = Image.new("RGB", (left + size + 20 + legend, top + size + 40), "white")
    draw = ImageDraw.Draw(image)
    draw.text((6, 6), title, fill="black", font=font)

    def xy(ua, ira):
        return left + ua / 100 * size, top + size - ira / 100 * size

    for tick in range(0, 101, 20):
        x, y = xy(tick, tick)
        draw.line([x, top, x, top + size], fill=(225, 225, 225))
        draw.line([left, y, left + size, y], fill=(225, 225, 225))
        draw.text((x - 8, top + size + 4), str(tick), fill="black", font=font)
        draw.text((left - 26, y - 6), str(tick), fill="black", font=font)
    draw.rectangle([left, top, left + size, top + size], outline="black")
    draw.text((left + size // 2 - 30, top + size + 20), "UA (%)", fill="black", font=font)
    draw.text((4, top - 16), "IRA (%)", fill="black", font=font)
    for r in records:
        if math.isnan(r["ua"]) or math.isnan(r["ira"]):
            continue
        x, y = xy(r["ua"], r["ira"])
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=_colour(methods, r["method"]))
    for i, row in enumerate(summary(records, methods)):
        colour = _colour(methods, row["method"])
        if not (math.isnan(row["ua"]) or math.isnan(row["ira"])):
            x, y = xy(row["ua"], row["ira"])
            draw.ellipse([x - 7, y - 7, x + 7, y + 7], fill=colour, outline="black", width=2)
        ly = top + 10 + 18 * i
        draw.ellipse([left + size + 20, ly, left + size + 30, ly + 10], fill=colour, outline="black")
        draw.text((left + size + 36, ly - 1), row["method"], fill="black", font=font)
    return image


def line_chart(
    title: str, series: dict[str, list[tuple[float, float]]], x_label: str, size=(360, 220)
) -> Image.Image:
    """One line per series (method) of (x, y) points, axes from 0 to the largest x and y, the values as ticks."""
    font = ImageFont.load_default()
    left, top, legend = 50, 30, 110
    width, height = size
    image = Image.new("RGB", (left + width + 20 + legend, top + height + 40), "white")
    draw = ImageDraw.Draw(image)
    draw.text((6, 6), title, fill="black", font=font)
    points = [(x, y) for line in series.values() for x, y in line if not math.isnan(y)]
    x_max = max([x for x, _ in points] + [1.0])
    y_max = max([y for _, y in points] + [1e-12])

    def xy(x, y):
        return left + x / x_max * width, top + height - y / y_max * height

    draw.rectangle([left, top, left + width, top + height], outline="black")
    for x in sorted({x for x, _ in points}):
        label = str(int(x)) if float(x).is_integer() else format_value(float(x))
        draw.text((xy(x, 0)[0] - 4, top + height + 4), label, fill="black", font=font)
    for tick in (0.0, y_max / 2, y_max):
        draw.text((4, xy(0, tick)[1] - 6), format_value(tick), fill="black", font=font)
    draw.text((left + width // 2 - 10, top + height + 20), x_label, fill="black", font=font)
    methods = list(series)
    for i, (method, line) in enumerate(series.items()):
        colour = _colour(methods, method)
        shown = [xy(x, y) for x, y in sorted(line) if not math.isnan(y)]
        if len(shown) > 1:
            draw.line(shown, fill=colour, width=2)
        for x, y in shown:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        ly = top + 10 + 18 * i
        draw.ellipse([left + width + 20, ly, left + width + 30, ly + 10], fill=colour, outline="black")
        draw.text((left + width + 36, ly - 1), method, fill="black", font=font)
    return image
