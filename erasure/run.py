"""Erase concepts from a text-to-image model and prove it: `python -m erasure.run --concept "van gogh"`.

Writes, atomically (a temporary folder renamed into place), to --out (default runs/<concept-slug>):
  pipeline/           a full diffusers folder: StableDiffusionPipeline.from_pretrained(...) loads it
  delta.safetensors   only the changed tensors; erasure.json says what, how, from which base
  metrics.json        UA / IRA / CRA, alias UA, FD, CLIP score and accuracy, time, memory, storage + definitions
  grid.png            original vs erased on the same seeds, judge verdict under each image
  report.html         one self-contained page with all of the above
User errors (an empty or unknown concept, a missing model folder, an unreachable hub id, an existing output
without --overwrite) print one sentence and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from erasure.canvas.world import OBJECT_ALIASES, OBJECTS, STYLE_ALIASES, UnknownConceptError, concept_kind


class UsageError(Exception):
    """A user mistake: printed as one sentence, exit code 2."""


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "concept"


def canonical(concept: str) -> str:
    """Main world name for a world concept given by name or alias."""
    name = concept.strip().lower()
    for main, aliases in {**STYLE_ALIASES, **OBJECT_ALIASES}.items():
        if name == main or name in aliases:
            return main
    return name


def parse_args(argv):
    from erasure.erase import METHODS

    parser = argparse.ArgumentParser(prog="python -m erasure.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--concept", action="append", default=[], help="concept to erase (repeat for several)"
    )
    parser.add_argument("--concepts-file", type=Path, help="text file with one concept per line")
    parser.add_argument("--method", default="doco", choices=sorted(METHODS))
    parser.add_argument(
        "--model", default="canvas-sd", help="canvas-sd, a local diffusers folder or a hub id"
    )
    parser.add_argument("--anchor", help="what the concept should become (default: plain for styles)")
    parser.add_argument("--steps", type=int, help="erasure steps (default: the method's canvas default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--eval-seeds", type=int, default=2, help="answer-set seeds per (style, object) prompt"
    )
    parser.add_argument("--out", type=Path, help="output folder (default runs/<concept-slug>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted erasure from its checkpoint"
    )
    parser.add_argument(
        "--no-eval", action="store_true", help="skip the evaluation (non-canvas models skip it anyway)"
    )
    return parser.parse_args(argv)


def validate(args) -> tuple[list[str], Path]:
    """Every check that needs no model, so a mistake costs nothing and leaves nothing behind."""
    concepts = [c for c in args.concept]
    if args.concepts_file:
        if not args.concepts_file.is_file():
            raise UsageError(f"concepts file {args.concepts_file} does not exist.")
        concepts += [line.strip() for line in args.concepts_file.read_text().splitlines() if line.strip()]
    if not args.concept and not args.concepts_file:
        raise UsageError('give at least one --concept (for example --concept "van gogh").')
    if any(not c.strip() for c in concepts) or not concepts:
        raise UsageError('the concept is empty; name what to erase, for example --concept "van gogh".')
    if args.model in ("canvas-sd", GAN_MODEL):
        try:
            concepts = [canonical(c) for c in concepts]
            for c in concepts:
                concept_kind(c)
        except UnknownConceptError as err:
            raise UsageError(str(err)) from None
        if args.anchor and canonical(args.anchor) not in (*STYLE_ALIASES, *OBJECTS):
            raise UsageError(f"unknown Canvas anchor {args.anchor!r}; use a style or an object of the world.")
    if args.steps is not None and args.steps < 1:
        raise UsageError("--steps must be a positive number of steps.")
    if args.eval_seeds < 1:
        raise UsageError("--eval-seeds must be at least 1.")
    out = args.out or Path("runs") / slug("+".join(concepts))
    if out.exists() and not (args.overwrite or args.resume):
        raise UsageError(f"output folder {out} already exists; pass --overwrite to replace it.")
    return concepts, out


def run(args) -> Path:
    if args.model == GAN_MODEL:
        return run_canvas_gan(args)
    import torch

    from erasure.erase import erase
    from pipelines.delta import save_delta
    from pipelines.loading import PipelineLoadError, load_pipeline

    concepts, out = validate(args)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    try:
        base = load_pipeline(args.model)
    except PipelineLoadError as err:
        raise UsageError(str(err)) from None
    # erase() leaves its input untouched and returns a pipeline sharing every component but the UNet.
    erased = base
    is_canvas = args.model == "canvas-sd"

    checkpoints = out.with_name(out.name + ".checkpoints")
    results = []
    for concept in concepts:
        results.append(
            erase(
                erased,
                concept,
                method=args.method,
                anchor=canonical(args.anchor) if args.anchor and is_canvas else args.anchor,
                steps=args.steps,
                seed=args.seed,
                checkpoint_dir=checkpoints / slug(concept),
                resume=args.resume,
            )
        )
        erased = results[-1].pipeline

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        erased.save_pretrained(tmp / "pipeline", safe_serialization=True)
        save_delta(results, tmp, base_model=args.model)
        storage = (tmp / "delta.safetensors").stat().st_size
        metrics = {
            "seconds": sum(r.seconds for r in results),
            "peak_memory_bytes": max(r.peak_memory_bytes for r in results),
            "storage_bytes": storage,
        }
        definitions = {
            "seconds": "wall-clock seconds of the erasure itself (anchor generation + training), evaluation excluded",
            "peak_memory_bytes": results[0].memory_definition,
            "storage_bytes": "bytes of delta.safetensors (only the changed tensors)",
        }
        if is_canvas and not args.no_eval:
            evaluate_into(tmp, base, erased, results, args, metrics, definitions)
        (tmp / "metrics.json").write_text(json.dumps({**metrics, "definitions": definitions}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return out


# --- canvas-gan: Text-to-Unlearn on the shipped StyleGAN2-lite (erasure/gan/, eval/gan_eval.py) ----------------
GAN_MODEL = "canvas-gan"


def run_canvas_gan(args) -> Path:
    """`--model canvas-gan`: the same checks and atomic output folder as above; --method does not apply."""
    concepts, out = validate(args)
    if args.resume:
        raise UsageError(
            "--resume does not apply to --model canvas-gan (unlearning takes minutes); use --overwrite."
        )
    if args.anchor and canonical(args.anchor) != "plain":
        raise UsageError(
            "--model canvas-gan takes no --anchor: erased styles become plain, erased objects spread."
        )
    from eval.gan_eval import GAN_DIR, run_gan

    if not (GAN_DIR / "config.json").exists():
        raise UsageError(
            f"canvas-gan not found in {GAN_DIR}; train it with `python -m erasure.canvas.train_gan`."
        )
    return run_gan(concepts, out, steps=args.steps, seed=args.seed, evaluate=not args.no_eval)


def evaluate_into(tmp: Path, base, erased, results, args, metrics: dict, definitions: dict) -> None:
    """Answer sets, metrics, grid and report for a canvas run (one concept: top level; several: averaged)."""
    from eval.evaluate import EvalSettings, comparison_grid, evaluate_erasure
    from eval.judges.models import load_judges
    from eval.report import write_report

    judges = load_judges()
    settings = EvalSettings(seeds=tuple(range(args.eval_seeds)))
    per_concept = {}
    for r in results:
        numbers, defs = evaluate_erasure(
            base, erased, r.concept, r.kind, judges, r.anchor, settings, Path("runs/.cache")
        )
        per_concept[r.concept] = numbers
        definitions.update(defs)
    keys = list(next(iter(per_concept.values())))
    for k in keys:
        metrics[k] = sum(v[k] for v in per_concept.values()) / len(per_concept)
    if len(per_concept) > 1:
        metrics["per_concept"] = per_concept
        definitions["per_concept"] = (
            "the same numbers for each erased concept; top-level values are their means"
        )
    grid = comparison_grid(
        {"original": base, "erased": erased}, results[0].concept, results[0].kind, judges, seed=args.seed
    )
    grid.save(tmp / "grid.png")
    row = {"method": args.method, "concept": ", ".join(r.concept for r in results)}
    row.update({k: round(v, 2) for k, v in metrics.items() if isinstance(v, float | int)})
    write_report(
        tmp / "report.html",
        f"Erasing {row['concept']} from {args.model} with {args.method}",
        [row],
        definitions,
        images={"grid": grid},
        bars={"UA / IRA / CRA (%)": {k: metrics[k] for k in ("ua", "ira", "cra", "alias_ua")}},
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        out = run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metrics = json.loads((out / "metrics.json").read_text())
    shown = {
        k: v
        for k, v in metrics.items()
        if k not in ("definitions", "per_concept") and not isinstance(v, dict)
    }
    what = "generator" if args.model == GAN_MODEL else "pipeline"
    print(f"erased {what} written to {out / what}")
    for key, value in shown.items():
        definition = metrics["definitions"].get(key, "")
        print(
            f"  {key:>18} = {value:.4g}   ({definition})"
            if isinstance(value, float)
            else f"  {key:>18} = {value}   ({definition})"
        )
    return 0


if __name__ == "__main__":
    start = time.time()
    code = main()
    if code == 0:
        print(f"done in {time.time() - start:.0f} s", file=sys.stderr)
    sys.exit(code)
