"""The UnlearnCanvas-style benchmark: erase every concept with every method, measure all on one shared answer set.

    OMP_WAIT_POLICY=PASSIVE python -m eval.bench --methods doco,esd,uce,ca --concepts styles --seeds 3 --out bench/

--concepts is `styles`, `objects`, `all` or a comma-separated list of world concepts (aliases name their concept).
Each (method, concept) cell erases with `erasure.erase.erase` (the method's Canvas defaults unless --steps) and is
measured by `eval.evaluate.evaluate_erasure` with the same prompts, seeds and judges; the base model's answer set is
generated once and cached in <out>/cache. Written to --out:
  cells/<method>/<concept>.json   one finished cell (numbers + definitions), written atomically: reruns skip it
  checkpoints/<method>/<concept>/ the running cell's training checkpoints: an interrupted cell resumes from them
  deltas/<method>/<concept>/      the erasure's delta.safetensors + erasure.json (storage = its size)
  results.json, results.csv       one record per (method, concept), every number, with definitions
  results.md                      means over concepts (rows = methods) per kind, then one table per concept
  plots/<kind>-<metric>.png       a bar chart per metric; plots/<kind>-ua_vs_ira.png, a UA-versus-IRA scatter
  grids/<concept>.png             original + every method on the same seed, judge verdict under each image
--device (default: cuda when there is one) is where the pipeline and the judges run; the erasures run on the
engine's Accelerator device. Bad input (unknown method or concept, a missing model or judges, an --out made with
other settings, an unusable --device) prints one sentence and exits with code 2. This is the one eval module that
calls the erasure engine; it never imports a method.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from erasure.canvas.world import ARTIST_STYLES, OBJECT_ALIASES, OBJECTS, STYLE_ALIASES, UnknownConceptError
from eval.report import format_value

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
    "peak_memory_bytes": "peak memory of the erasure as erasure.erase measures it (see memory_definition)",
    "peak_memory_mb": "peak_memory_bytes / 2^20",
    "storage_bytes": "bytes of the cell's delta.safetensors (only the tensors the erasure changed)",
    "storage_mb": "storage_bytes / 2^20",
    "gap_to_doco": "the method's mean(UA,IRA,CRA) minus DoCo's, over the same concepts (negative: behind DoCo)",
    "summary": "summary rows are means over the concepts of that kind; NaN values are left out of a mean",
}
PALETTE = [(74, 120, 181), (214, 96, 77), (96, 168, 96), (148, 103, 189), (230, 160, 40), (90, 90, 90)]


class UsageError(Exception):
    """A user mistake: printed as one sentence, exit code 2."""


# --- input -------------------------------------------------------------------------------------------------------
def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "concept"


def parse_methods(text: str, known) -> list[str]:
    methods = list(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    if not methods:
        raise UsageError(f"--methods is empty; valid methods: {', '.join(known)}.")
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UsageError(f"unknown method {unknown[0]!r}; valid methods: {', '.join(known)}.")
    return methods


def parse_concepts(text: str) -> list[tuple[str, str]]:
    """[(concept, kind)] for 'styles', 'objects', 'all' or a comma list of world concepts (aliases -> main name)."""
    name = text.strip().lower()
    if name in ("styles", "objects", "all"):
        styles = list(ARTIST_STYLES) if name in ("styles", "all") else []
        objects = list(OBJECTS) if name in ("objects", "all") else []
        return [(s, "style") for s in styles] + [(o, "object") for o in objects]
    out = []
    for item in (c.strip() for c in name.split(",")):
        if not item:
            continue
        match = [(s, "style") for s, a in STYLE_ALIASES.items() if s in ARTIST_STYLES and item in (s, *a)]
        match += [(o, "object") for o, a in OBJECT_ALIASES.items() if item in (o, *a)]
        if not match:
            raise UsageError(
                f"unknown concept {item!r}; use styles, objects, all, or any of: "
                f"{', '.join(ARTIST_STYLES)}, {', '.join(OBJECTS)}."
            )
        out.append(match[0])
    if not out:
        raise UsageError("--concepts is empty; use styles, objects, all or a comma-separated list.")
    return list(dict.fromkeys(out))


# --- files -------------------------------------------------------------------------------------------------------
def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write to a temporary file beside `path`, then rename it into place: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_png(image: Image.Image, path: Path) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_atomic(path, buffer.getvalue())


def cell_path(out: Path, method: str, concept: str) -> Path:
    return Path(out) / "cells" / method / f"{slug(concept)}.json"


def delta_dir(out: Path, method: str, concept: str) -> Path:
    return Path(out) / "deltas" / method / slug(concept)


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: asdict(v) if is_dataclass(v) else str(v)))


def check_settings(out: Path, settings: dict, write: bool = True) -> None:
    """Cells from another model, seeds or steps must not mix with these: refuse such an --out (else record them)."""
    path = Path(out) / "settings.json"
    settings = _jsonable(settings)
    if path.exists():
        old = json.loads(path.read_text())
        differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if differ:
            raise UsageError(
                f"{out} holds results made with other settings ({', '.join(differ)}); "
                "use another --out or the same options."
            )
    elif write:
        write_atomic(path, json.dumps(settings, indent=2) + "\n")


# --- one cell ----------------------------------------------------------------------------------------------------
def run_cell(
    base, method, concept, kind, judges, out, settings, seed=0, steps=None, config=None, progress=True
):
    """Erase `concept` from `base` with `method`, save the delta, evaluate, and write the cell's JSON atomically."""
    from erasure.erase import erase
    from eval.evaluate import evaluate_erasure
    from pipelines.delta import DELTA_FILE, save_delta

    checkpoints = Path(out) / "checkpoints" / method / slug(concept)
    result = erase(
        base,
        concept,
        method=method,
        config=config,
        steps=steps,
        seed=seed,
        checkpoint_dir=checkpoints,
        resume=True,  # an interrupted cell continues from its latest checkpoint
        progress=progress,
    )
    folder = delta_dir(out, method, concept)
    save_delta(result, folder)
    storage = (folder / DELTA_FILE).stat().st_size
    numbers, definitions = evaluate_erasure(
        base,
        result.pipeline,
        result.concept,
        result.kind,
        judges,
        result.anchor,
        settings,
        Path(out) / "cache",
    )
    record = {"method": method, "concept": result.concept, "kind": result.kind, "anchor": result.anchor}
    record.update({k: float(v) for k, v in numbers.items()})
    record["mean"] = (record["ua"] + record["ira"] + record["cra"]) / 3
    record.update(
        seconds=result.seconds,
        peak_memory_bytes=result.peak_memory_bytes,
        storage_bytes=storage,
        steps=result.steps,
        seed=seed,
        config=result.config,
        base=result.base,
    )
    definitions = {**definitions, **DEFINITIONS, "memory_definition": result.memory_definition}
    record["definitions"] = {k: v for k, v in definitions.items() if not k.endswith("_mb") and k != "summary"}
    record = _jsonable(record)
    write_atomic(cell_path(out, method, concept), json.dumps(record, indent=2) + "\n")
    shutil.rmtree(checkpoints, ignore_errors=True)
    return record


def erased_pipeline(base, folder: Path):
    """`base` with the delta in `folder` applied to copies of its UNet and text encoder (base stays as it is)."""
    from diffusers.utils import logging as diffusers_logging

    from pipelines.delta import apply_delta

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        pipe = type(base).from_pipe(
            base, unet=copy.deepcopy(base.unet), text_encoder=copy.deepcopy(base.text_encoder)
        )
    finally:
        diffusers_logging.set_verbosity(verbosity)
    pipe.set_progress_bar_config(disable=True)
    return apply_delta(pipe, folder)


# --- the run -----------------------------------------------------------------------------------------------------
def run_bench(
    base,
    methods: list[str],
    concepts: list[tuple[str, str]],
    judges,
    out: str | Path,
    settings=None,
    seed: int = 0,
    steps: int | None = None,
    configs: dict | None = None,
    model: str = "",
    grids: bool = True,
    command: str = "",
    progress: bool = True,
) -> list[dict]:
    """Every (method, concept) cell (finished ones are loaded, not rerun), then results, tables, plots and grids.

    `configs` maps a method to its Config (or a dict of its fields) instead of its defaults. Returns the records.
    """
    from tqdm.auto import tqdm

    from eval.evaluate import EvalSettings, comparison_grid

    out = Path(out)
    settings = settings or EvalSettings()
    configs = configs or {}
    check_settings(
        out,
        {
            "model": model,
            "eval": asdict(settings),
            "seed": seed,
            "steps": steps,
            "configs": {m: configs[m] for m in sorted(configs)},
        },
    )
    cells = [(m, c, k) for c, k in concepts for m in methods]
    done = sum(cell_path(out, m, c).exists() for m, c, _ in cells)
    records = {}
    with tqdm(total=len(cells), initial=done, desc="bench", unit="cell", disable=not progress) as bar:
        for concept, kind in concepts:
            for method in methods:
                path = cell_path(out, method, concept)
                if path.exists():
                    records[method, concept] = json.loads(path.read_text())
                    continue
                record = run_cell(
                    base,
                    method,
                    concept,
                    kind,
                    judges,
                    out,
                    settings,
                    seed,
                    steps,
                    configs.get(method),
                    progress,
                )
                records[method, concept] = record
                bar.update(1)
                bar.write(
                    f"{method} {concept}: UA {record['ua']:.1f} IRA {record['ira']:.1f} CRA {record['cra']:.1f} "
                    f"({record['seconds']:.0f} s)"
                )
            grid_path = out / "grids" / f"{slug(concept)}.png"
            if grids and not grid_path.exists():
                pipes = {"original": base}
                for method in methods:
                    if (delta_dir(out, method, concept) / "delta.safetensors").exists():
                        pipes[method] = erased_pipeline(base, delta_dir(out, method, concept))
                save_png(
                    comparison_grid(pipes, concept, kind, judges, seed=seed, settings=settings), grid_path
                )
            ordered = [records[m, c] for c, _ in concepts for m in methods if (m, c) in records]
            write_results(
                out, ordered, methods, {"model": model, "command": command, "eval": asdict(settings)}
            )
    return ordered


# --- results -----------------------------------------------------------------------------------------------------
def _mean(values) -> float:
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
            row[key] = _mean(_value(r, key) for r in mine)
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
    write_atomic(out / "results.json", json.dumps(_jsonable(document), indent=2) + "\n")
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


# --- command line ------------------------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="doco,esd,uce,ca", help="comma-separated erasure methods")
    parser.add_argument("--concepts", default="all", help="styles, objects, all, or a comma-separated list")
    parser.add_argument("--seeds", type=int, default=3, help="answer-set seeds per (style, object) prompt")
    parser.add_argument("--model", default="canvas-sd", help="canvas-sd or a Canvas-world pipeline folder")
    parser.add_argument(
        "--out", type=Path, default=Path("bench"), help="output folder (reruns skip done cells)"
    )
    parser.add_argument("--seed", type=int, default=0, help="erasure seed (and the grids' image seed)")
    parser.add_argument("--steps", type=int, help="override every iterative method's number of steps")
    parser.add_argument("--no-grids", action="store_true", help="skip the per-concept comparison grids")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: min(2, CPU count))")
    parser.add_argument(
        "--device", help="where the pipeline and judges run (default: cuda when available, else cpu)"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        from erasure.erase import METHODS

        methods = parse_methods(args.methods, list(METHODS))
        concepts = parse_concepts(args.concepts)
        if args.seeds < 1:
            raise UsageError("--seeds must be at least 1.")
        if args.steps is not None and args.steps < 1:
            raise UsageError("--steps must be a positive number of steps.")
        if args.threads is not None and args.threads < 1:
            raise UsageError("--threads must be at least 1.")
        import torch

        from eval.evaluate import EvalSettings
        from eval.judges.models import load_judges
        from pipelines.loading import PipelineLoadError, load_pipeline

        settings = EvalSettings(seeds=tuple(range(args.seeds)))
        check_settings(
            args.out,
            {
                "model": args.model,
                "eval": asdict(settings),
                "seed": args.seed,
                "steps": args.steps,
                "configs": {},
            },
            write=False,
        )
        torch.set_num_threads(args.threads or max(1, min(2, os.cpu_count() or 1)))
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(device)
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"--device {args.device!r} cannot be used here ({reason}).") from None
        try:
            base = load_pipeline(args.model).to(device)
            judges = load_judges(device)
        except (PipelineLoadError, FileNotFoundError) as err:
            raise UsageError(str(err)) from None
        run_bench(
            base,
            methods,
            concepts,
            judges,
            args.out,
            settings,
            seed=args.seed,
            steps=args.steps,
            model=args.model,
            grids=not args.no_grids,
            command="python -m eval.bench " + shlex.join(argv),
        )
    except (UsageError, UnknownConceptError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"results written to {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
