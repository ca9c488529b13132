"""Erase concepts from a text-to-image model and prove it: `python -m erasure.run --concept "van gogh"`.

Writes, atomically (a temporary folder renamed into place), to --out (default runs/<concept-slug>):
  pipeline/           a full diffusers folder: StableDiffusionPipeline.from_pretrained(...) loads it
  delta.safetensors   only the changed tensors; erasure.json says what, how, from which base
  lora/               the change as a LoRA: pipe.load_lora_weights(".../lora") on the base (pipelines/lora.py)
  README.md           a model card: base, erasures, figures with their definitions, how to load each form
  metrics.json        UA / IRA / CRA, alias UA, FD, CLIP score and accuracy, time, memory, storage + definitions
  grid.png            original vs erased on the same seeds, judge verdict under each image
  report.html         one self-contained page with all of the above
  audit/<concept>/    with --audit: eval.audit's audit.json and grid.png, and its section in the report
Several concepts (--concept repeated, or --concepts-file) are erased in one run (--mode together, the default) or
one after another (--mode sequential). --model may be an earlier run's folder (or its pipeline/): the new erasure
starts from that pipeline, its erasure.json and delta carry the whole chain from the original base, and the
evaluation counts every concept erased so far as erased.
`--model canvas-gan` runs Text-to-Unlearn on the shipped StyleGAN2-lite instead (generator/, unlearning.json,
metrics.json, grid.png, report.html), or on another canvas-gan folder given by --generator. User errors (an empty
or unknown concept, a missing model folder, an unreachable hub id, an existing output without --overwrite, --steps
for a closed-form method) print one sentence and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from erasure.canvas.world import PLAIN, UnknownConceptError, canonical
from erasure.files import atomic_folder, slug
from erasure.methods import METHODS
from erasure.options import parse_option

GAN_MODEL = "canvas-gan"


class UsageError(Exception):
    """A user mistake: printed as one sentence, exit code 2."""


class TrainingFailed(Exception):
    """An erasure that stopped on its divergence guard: printed as one sentence with what to do, exit code 1."""


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m erasure.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--concept", action="append", default=[], help="concept to erase (repeat for several)"
    )
    parser.add_argument("--concepts-file", type=Path, help="text file with one concept per line")
    parser.add_argument("--method", default="doco", choices=sorted(METHODS))
    parser.add_argument(
        "--model", default="canvas-sd", help="canvas-sd, a local diffusers folder or a hub id"
    )
    parser.add_argument(
        "--generator",
        type=Path,
        help="with --model canvas-gan: a folder written by erasure.train.gan to unlearn (default: the shipped one)",
    )
    parser.add_argument("--anchor", help="what the concept should become (default: plain for styles)")
    parser.add_argument(
        "--mode",
        choices=("together", "sequential"),
        default="together",
        help="several concepts: in one run (together) or one run after another (sequential)",
    )
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
        "--robust",
        action="store_true",
        help="DoCo with the inner attack in its loop (DoCoConfig.robust; erasure/methods/adversaries.py)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="field=value of the method's Config over its defaults (repeat; e.g. learning_rate=5e-6); with "
        "--model canvas-gan, of Text-to-Unlearn's TextUnlearnConfig (e.g. train=all)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: up to 2; 1 per process when runs share the cores)",
    )
    parser.add_argument(
        "--kind",
        choices=("style", "object"),
        help="style or object, for a concept the Canvas world does not know",
    )
    parser.add_argument(
        "--clip",
        help="NAME:PATH, an open_clip model and its local checkpoint: CLIP score and accuracy on any model "
        "(eval/clip_eval.py)",
    )
    parser.add_argument(
        "--no-eval",
        action="store_true",
        help="skip the evaluation (off the Canvas world there is one only with --clip or for nudity)",
    )
    parser.add_argument(
        "--audit", action="store_true", help="attack the erased model (eval.audit) into audit/ and the report"
    )
    parser.add_argument("--attacks", default="all", help="with --audit: all, or a comma list of attacks")
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        help="with --audit: attack.field=value (eval.audit's budgets)",
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
    chain(args)
    concepts = [c.strip().lower() for c in concepts]
    if args.world:
        try:
            named = [canonical(c) for c in concepts]
        except UnknownConceptError as err:
            raise UsageError(str(err)) from None
        concepts = [name for name, _ in named]
        if args.mode == "together" and len({kind for _, kind in named}) > 1 and args.model != GAN_MODEL:
            raise UsageError(
                "concepts of both kinds (styles and objects) cannot be erased together: use --mode sequential."
            )
        if args.anchor:
            try:
                args.anchor = canonical(args.anchor, allow_plain=True)[0]
            except UnknownConceptError:
                raise UsageError(
                    f"unknown Canvas anchor {args.anchor!r}; use a style or an object of the world."
                ) from None
    repeated = sorted({c for c in concepts if concepts.count(c) > 1})
    if repeated:
        raise UsageError(f"'{repeated[0]}' is named twice among the concepts (an alias counts as its name).")
    again = [c for c in concepts if c in args.erased_before]
    if again:
        raise UsageError(f"'{again[0]}' was already erased from {args.model} (its erasure.json says so).")
    if args.steps is not None and args.steps < 1:
        raise UsageError("--steps must be a positive number of steps.")
    if args.steps is not None and args.model != GAN_MODEL and not METHODS[args.method].Config.has_steps:
        raise UsageError(f"--method {args.method} is a closed-form edit and takes no --steps.")
    if args.eval_seeds < 1:
        raise UsageError("--eval-seeds must be at least 1.")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1.")
    if args.generator is not None and args.model != GAN_MODEL:
        raise UsageError("--generator names a canvas-gan to unlearn: use it with --model canvas-gan.")
    if args.mode == "sequential" and args.model == GAN_MODEL:
        raise UsageError(
            "canvas-gan unlearns its concepts together; --mode sequential is for diffusion models."
        )
    if args.robust and (args.method != "doco" or args.model == GAN_MODEL):
        raise UsageError("--robust is robust DoCo: use it with --method doco on a text-to-image model.")
    args.overrides = {"robust": True} if args.robust else {}
    if args.model == GAN_MODEL:
        from erasure.gan import TextUnlearnConfig as config_class
    else:
        config_class = METHODS[args.method].Config
    for item in args.config:
        name, _, value = item.partition("=")
        if not value:
            raise UsageError(f"--config {item!r} must read field=value.")
        try:
            args.overrides[name] = parse_option(config_class, name, value)
            config_class(**args.overrides)  # the method's own checks, before any model loads
        except (ValueError, TypeError) as err:
            raise UsageError(f"--config {item!r}: {err}") from None
    if args.clip and not args.no_eval:
        from eval.clip_eval import check_clip_spec

        try:
            check_clip_spec(args.clip)
        except ValueError as err:
            raise UsageError(str(err)) from None
    if "nudity" in concepts and not args.no_eval:
        from eval.nudity import load_detector

        try:
            load_detector()
        except ValueError as err:
            raise UsageError(str(err)) from None
    if args.audit:
        from eval import audit

        if args.model == GAN_MODEL:
            raise UsageError("--audit attacks text-to-image pipelines; canvas-gan has no prompt to attack.")
        if not args.world or args.no_eval:
            raise UsageError(
                "--audit needs the Canvas world's judges: use it with canvas-sd and without --no-eval."
            )
        try:
            args.attack_configs = audit.parse_budget(args.budget, audit.parse_attacks(args.attacks))
        except audit.UsageError as err:
            raise UsageError(str(err)) from None
    out = args.out or Path("runs") / slug("+".join(concepts))
    if out.exists() and not (args.overwrite or args.resume):
        raise UsageError(f"output folder {out} already exists; pass --overwrite to replace it.")
    return concepts, out


def chain(args) -> None:
    """Where --model comes from: `args.world` (a Canvas model: canvas-sd, canvas-gan, a folder with the world's
    tokenizer (a copy of canvas-sd), or a run made from one of them), and for an earlier run's folder `args.previous` (its delta and erasure.json), `args.pipeline_path`
    (its pipeline/), `args.base_model` (the chain's original base) and `args.erased_before` (what it erased)."""
    from pipelines.delta import erased_concepts, erasure_chain, erasure_run_of, load_delta

    args.previous, args.pipeline_path, args.base_model, args.erased_before = None, args.model, args.model, []
    run_dir = erasure_run_of(args.model) if args.model not in ("canvas-sd", GAN_MODEL) else None
    if run_dir is not None:
        try:
            args.previous = load_delta(run_dir)
        except ValueError as err:
            raise UsageError(f"{args.model} is an erasure run that cannot be built on: {err}") from None
        meta = args.previous[1]
        args.pipeline_path, args.base_model = str(run_dir / "pipeline"), meta["base"]
        args.erased_before = erased_concepts(erasure_chain(meta))[0]
    from pipelines.loading import is_canvas_folder

    args.world = args.base_model == GAN_MODEL or is_canvas_folder(args.base_model)


def run(args) -> Path:
    if args.model == GAN_MODEL:
        return run_canvas_gan(args)
    import torch

    from erasure.engine import ErasureDiverged, erase
    from pipelines.delta import META_FILE, save_delta
    from pipelines.loading import PipelineLoadError, load_pipeline
    from pipelines.lora import export_lora

    concepts, out = validate(args)
    torch.set_num_threads(args.threads or max(1, min(2, os.cpu_count() or 1)))
    try:
        start = load_pipeline(args.pipeline_path)
        base = start if args.previous is None else load_pipeline(args.base_model)
    except PipelineLoadError as err:
        raise UsageError(str(err)) from None
    # erase() leaves its input untouched and returns a pipeline sharing every component but the UNet.
    erased = start
    groups = [concepts] if args.mode == "together" else [[c] for c in concepts]

    checkpoints = out.with_name(out.name + ".checkpoints")
    results = []
    for group in groups:
        try:
            results.append(
                erase(
                    erased,
                    group,
                    method=args.method,
                    anchor=args.anchor,
                    config=args.overrides or None,
                    steps=args.steps,
                    seed=args.seed,
                    checkpoint_dir=checkpoints / slug("+".join(group)),
                    resume=args.resume,
                    erased_before=args.erased_before + [c for r in results for c in r.concepts],
                    kind=args.kind,
                )
            )
        except ValueError as err:  # what the request refuses: a kind for an unknown concept, an anchor, ...
            raise UsageError(str(err)) from None
        except ErasureDiverged as err:
            raise TrainingFailed(
                f"{err} Nothing was written; the last checkpoint is kept for --resume. A lower learning rate "
                "(--config learning_rate=...) avoids it; --config divergence_factor=0 stops on NaN/inf only."
            ) from None
        erased = results[-1].pipeline

    with atomic_folder(out) as tmp:
        erased.save_pretrained(tmp / "pipeline", safe_serialization=True)
        save_delta(results, tmp, base_model=args.model, previous=args.previous)
        lora = export_lora(tmp, base)
        storage = (tmp / "delta.safetensors").stat().st_size
        metrics = {
            "seconds": sum(r.seconds for r in results),
            "peak_memory_bytes": max(r.peak_memory_bytes for r in results),
            "storage_bytes": storage,
            "lora_bytes": lora.get("bytes"),
        }
        definitions = {
            "seconds": "wall-clock seconds of the erasure itself (anchor generation + training), evaluation excluded",
            "peak_memory_bytes": results[0].memory_definition,
            "storage_bytes": "bytes of delta.safetensors (only the changed tensors)",
            "lora_bytes": "bytes of lora/pytorch_lora_weights.safetensors (None: the delta is not a LoRA's; "
            "erasure.json 'lora' says why)",
        }
        from erasure.run_outputs import audit_into, evaluate_into, evaluate_real_into, write_model_card

        audit_html = audit_into(tmp, base, erased, results, args) if args.audit else ""
        if args.world and not args.no_eval:
            erasures = json.loads((tmp / META_FILE).read_text())["erasures"]
            evaluate_into(tmp, base, erased, erasures, args, metrics, definitions, audit_html)
        elif not args.no_eval:
            evaluate_real_into(tmp, base, erased, results, args, metrics, definitions)
        (tmp / "metrics.json").write_text(json.dumps({**metrics, "definitions": definitions}, indent=2))
        write_model_card(tmp, json.loads((tmp / META_FILE).read_text()), metrics, definitions)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return out


def run_canvas_gan(args) -> Path:
    """`--model canvas-gan`: Text-to-Unlearn on the shipped StyleGAN2-lite, with the same checks and atomic output
    folder as above (--method does not apply). Writes generator/ (model.safetensors + config.json),
    unlearning.json, metrics.json, grid.png and report.html."""
    concepts, out = validate(args)
    if args.anchor and args.anchor != PLAIN:
        raise UsageError(
            "--model canvas-gan takes no --anchor: erased styles become plain, erased objects spread."
        )
    from pipelines.stylegan import CANVAS_GAN

    source = args.generator or CANVAS_GAN
    if not (source / "config.json").exists():
        raise UsageError(f"canvas-gan not found in {source}; train it with `python -m erasure.train.gan`.")
    import torch

    from erasure.engine import unlearn
    from erasure.gan import TextUnlearnConfig
    from pipelines.stylegan import load_generator, save_generator

    torch.set_num_threads(args.threads or max(1, min(2, os.cpu_count() or 1)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = load_generator(source, device)
    checkpoints = out.with_name(out.name + ".checkpoints")
    config = TextUnlearnConfig(**{"seed": args.seed, **args.overrides})
    new, info = unlearn(
        base, concepts, config, steps=args.steps, checkpoint_dir=checkpoints, resume=args.resume
    )
    with atomic_folder(out) as tmp:
        info["base"] = str(source)
        unlearning = {k: v for k, v in info.items() if k != "history"}
        save_generator(new.cpu(), tmp / "generator", extra={"unlearning": unlearning})
        (tmp / "unlearning.json").write_text(json.dumps(info, indent=2))
        metrics = {"seconds": info["seconds"]}
        definitions = {"seconds": "wall-clock seconds of the unlearning itself (canvas-clip pool + training)"}
        if not args.no_eval:
            from erasure.run_outputs import evaluate_gan_into

            metrics, definitions = evaluate_gan_into(tmp, base.to(device), new.to(device), info, config)
        metrics = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
        (tmp / "metrics.json").write_text(json.dumps({**metrics, "definitions": definitions}, indent=2))
    shutil.rmtree(checkpoints, ignore_errors=True)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        out = run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from eval.report import format_numbers

    metrics = json.loads((out / "metrics.json").read_text())
    what = "generator" if args.model == GAN_MODEL else "pipeline"
    print(f"erased {what} written to {out / what}")
    print(format_numbers(metrics, metrics["definitions"]))
    for path in sorted((out / "audit").glob("*/audit.json")):
        record = json.loads(path.read_text())
        attacks = ", ".join(
            f"{name} {asr:.0f} (base {record['base_asr'][name]:.0f}, control {record['control_asr'][name]:.0f})"
            for name, asr in record["asr"].items()
        )
        print(
            f"audit of '{record['concept']}', ASR %: {attacks}   ({path.relative_to(out)} has the definitions)"
        )
    return 0


if __name__ == "__main__":
    start = time.time()
    code = main()
    if code == 0:
        print(f"done in {time.time() - start:.0f} s", file=sys.stderr)
    sys.exit(code)
