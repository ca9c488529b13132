"""Many concepts: how each method's erasure holds as the number of erased concepts grows, together or in sequence.

    OMP_WAIT_POLICY=PASSIVE python -m eval.scale --methods doco,uce,ca,esd --kind styles --k 1,3,6,11 \
        --mode together,sequential --out scale/

The concepts are a seeded draw (--seed) of the world's artist styles or objects; k concepts are the first k of
that draw, so every list holds the smaller ones. For each (method, mode, k):
  together    one erasure of the k concepts from the base (`erase(base, concepts[:k])`);
  sequential  concepts[0] erased from the base, concepts[1] from that, ... (each erasure starts from the previous
              one's pipeline, as `erasure.run --model <previous run>`); its seconds are the sum of the k runs'.
k = 1 is the same erasure in both modes and is made once. Each erased model is scored by `eval.evaluate` on the
shared answer set (--eval-seeds seeds), every erased concept counted as erased: UA is the mean over them, IRA the
mean accuracy of the concepts of that kind that remain, CRA the other kind's (those that remain), FD over the
images of pairs that name no erased concept. Written to --out:
  erasures/<method>/<kind>/<chain>/  each erasure's delta.safetensors + erasure.json (the whole chain from the
                                     base) and, once scored, metrics.json: reruns reuse them (resumable)
  checkpoints/                       the running erasure's training checkpoints (an interrupted one resumes)
  scale.json                         records (method, mode, kind, k, concepts, ua, ira, cra, fd, base_ira,
                                     base_cra, base_fd, seconds, peak_memory_bytes), definitions, settings
  scale.md, plots/<kind>-<mode>-<metric>.png   every metric against k, one line per method
--report-only runs nothing and gathers the finished cells (from parallel runs with the same settings).
Bad input (an unknown method, a k out of range, an --out made with other settings) prints one sentence, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import sys
from pathlib import Path

from erasure.canvas.world import ARTIST_STYLES, OBJECTS
from erasure.files import atomic_folder, slug, write_atomic

KINDS = {"styles": ("style", ARTIST_STYLES), "objects": ("object", OBJECTS)}
MODES = ("together", "sequential")
METRICS = ("ua", "ira", "cra", "fd", "seconds", "peak_memory_bytes")
DEFINITIONS = {
    "concepts": "the first k of a seeded shuffle (random.Random(seed)) of the kind's world concepts",
    "ua": "unlearning accuracy: mean over the k erased concepts of 100 - judge accuracy on their prompts (%)",
    "ira": "in-domain retain accuracy: mean judge accuracy over the concepts of that kind not erased (%)",
    "cra": "cross-domain retain accuracy: mean judge accuracy of the other kind, over those not erased (%)",
    "fd": "Frechet distance of judge features, erased images vs held-out real renders, pairs naming no erased concept",
    "base_ira": "IRA / CRA / FD of the base model with the same concepts left out",
    "seconds": "wall-clock seconds of erasing (together: one run; sequential: the sum of the k runs)",
    "peak_memory_bytes": "the largest peak of the runs (eval.evaluate / the engine's definition)",
}


class UsageError(Exception):
    """A user mistake: printed as one sentence, exit code 2."""


def concept_order(kind: str, seed: int) -> list[str]:
    """The kind's world concepts in a seeded order (random.Random(seed).shuffle of the world's list)."""
    order = list(KINDS[kind][1])
    random.Random(seed).shuffle(order)
    return order


def groups_of(concepts: list[str], mode: str) -> list[list[str]]:
    """The erasures that make a cell: one group of every concept (together), or one concept each (sequential)."""
    return [list(concepts)] if mode == "together" or len(concepts) == 1 else [[c] for c in concepts]


def chain_dir(out: Path, method: str, kind: str, groups: list[list[str]]) -> Path:
    """erasures/<method>/<kind>/<chain>: '+' joins concepts erased together, '_then_' erasures in sequence."""
    name = "_then_".join("+".join(slug(c) for c in group) for group in groups)
    return Path(out) / "erasures" / method / kind / name


def erase_chain(
    base, method: str, kind: str, groups, out: Path, seed: int, model: str, config=None, progress=True
):
    """Each erasure of `groups` in turn, each from the previous one's pipeline; a saved erasure is reused.

    `config`: the method's config or a dict over its defaults (None: its Canvas defaults). Returns the folder of
    the last erasure (its delta and erasure.json hold the whole chain from `base`)."""
    from erasure.engine import erase
    from pipelines.delta import DELTA_FILE, erased_copy, load_delta, save_delta

    pipe, previous, erased = base, None, []
    for i, group in enumerate(groups):
        folder = chain_dir(out, method, kind, groups[: i + 1])
        if not (folder / DELTA_FILE).exists():
            checkpoints = Path(out) / "checkpoints" / folder.relative_to(Path(out) / "erasures")
            result = erase(
                pipe,
                group,
                method=method,
                config=config,
                seed=seed,
                checkpoint_dir=checkpoints,
                resume=True,
                progress=progress,
                erased_before=erased,
            )
            with atomic_folder(folder) as tmp:
                save_delta(result, tmp, base_model=model, previous=previous)
            shutil.rmtree(checkpoints, ignore_errors=True)
        previous = load_delta(folder)
        erased += group
        if i + 1 < len(groups):
            pipe = erased_copy(base, previous[0])
    return folder


def score(base, folder: Path, judges, settings, out: Path) -> dict:
    """metrics.json in an erasure's folder: eval.evaluate's numbers for every concept its chain erased."""
    from eval.evaluate import evaluate_erasure
    from eval.report import jsonable
    from pipelines.delta import erased_concepts, erased_copy, erasure_chain, load_delta

    path = folder / "metrics.json"
    if path.exists():
        return json.loads(path.read_text())
    delta, meta = load_delta(folder)
    concepts, kinds, anchors = erased_concepts(erasure_chain(meta))
    erased = erased_copy(base, delta)
    numbers, definitions = evaluate_erasure(
        base, erased, concepts, kinds, judges, anchors, settings, Path(out) / "cache"
    )
    numbers.pop("per_class")
    record = {
        "concepts": concepts,
        **numbers,
        "seconds": meta["seconds"],
        "peak_memory_bytes": meta["peak_memory_bytes"],
    }
    write_atomic(path, json.dumps(jsonable({**record, "definitions": definitions}), indent=2) + "\n")
    return record


def cell_record(method: str, mode: str, kind: str, k: int, numbers: dict) -> dict:
    keys = ("ua", "ira", "cra", "fd", "base_ira", "base_cra", "base_fd", "seconds", "peak_memory_bytes")
    record = {"method": method, "mode": mode, "kind": kind, "k": k, "concepts": numbers["concepts"]}
    record.update({key: numbers[key] for key in keys})
    return record


def run_scale(
    base,
    methods,
    kind_name,
    ks,
    modes,
    judges,
    out,
    settings,
    seed,
    model,
    configs=None,
    finished_only=False,
    progress=True,
) -> list[dict]:
    """Every (method, mode, k) cell of one kind, made (or, with finished_only, only gathered) in order.
    `configs`: {method: config} over the methods' defaults (tests give small ones)."""
    from pipelines.delta import DELTA_FILE

    kind = KINDS[kind_name][0]
    order = concept_order(kind_name, seed)
    records = []
    for method in methods:
        for mode in modes:
            for k in ks:
                groups = groups_of(order[:k], mode)
                folder = chain_dir(out, method, kind, groups)
                if finished_only:
                    if not (folder / "metrics.json").exists():
                        continue
                elif not (folder / DELTA_FILE).exists():
                    config = (configs or {}).get(method)
                    folder = erase_chain(base, method, kind, groups, out, seed, model, config, progress)
                numbers = score(base, folder, judges, settings, out)
                records.append(cell_record(method, mode, kind, k, numbers))
    return records


def write_scale(out: Path, records: list[dict], meta: dict) -> None:
    """scale.json (every record, with the definitions), scale.md (one table per kind, mode and metric: rows are
    methods, columns k) and the plots, each written atomically."""
    from eval.report import format_value, jsonable, save_png
    from eval.results import line_chart

    out = Path(out)
    write_atomic(
        out / "scale.json",
        json.dumps(jsonable({**meta, "definitions": DEFINITIONS, "records": records}), indent=2) + "\n",
    )
    parts = ["# Many concepts", "", f"Regenerate: `OMP_WAIT_POLICY=PASSIVE {meta['command']}`", ""]
    parts += [f"Machine: {meta['machine']}.", ""]
    parts += [f"- `{k}`: {v}" for k, v in DEFINITIONS.items()] + [""]
    for kind in sorted({r["kind"] for r in records}):
        for mode in MODES:
            mine = [r for r in records if r["kind"] == kind and r["mode"] == mode]
            if not mine:
                continue
            ks = sorted({r["k"] for r in mine})
            methods = list(dict.fromkeys(r["method"] for r in mine))
            parts += [f"## {kind}s, {mode}", ""]
            for metric in METRICS:
                parts += [f"{metric}:", "", "| method | " + " | ".join(f"k={k}" for k in ks) + " |"]
                parts += ["|---" * (len(ks) + 1) + "|"]
                series = {}
                for method in methods:
                    row = {r["k"]: r[metric] for r in mine if r["method"] == method}
                    parts += [
                        f"| {method} | "
                        + " | ".join(format_value(row[k]) if k in row else "" for k in ks)
                        + " |"
                    ]
                    series[method] = sorted(row.items())
                if f"base_{metric}" in mine[0]:  # the base model with the same concepts left out
                    row = {r["k"]: r[f"base_{metric}"] for r in mine}
                    parts += ["| base | " + " | ".join(format_value(row[k]) for k in ks) + " |"]
                    series["base"] = sorted(row.items())
                parts += [""]
                chart = line_chart(f"{metric}, {kind}s, {mode}", series, "k (concepts erased)")
                save_png(chart, out / "plots" / f"{kind}s-{mode}-{metric}.png")
    write_atomic(out / "scale.md", "\n".join(parts))


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m eval.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="doco,uce,ca,esd", help="comma-separated erasure methods")
    parser.add_argument("--kind", default="styles", choices=sorted(KINDS), help="styles or objects")
    parser.add_argument("--k", default="1,3,6,11", help="comma-separated numbers of concepts")
    parser.add_argument("--mode", default="together,sequential", help="together, sequential, or both")
    parser.add_argument("--out", type=Path, default=Path("scale"), help="output folder (reruns reuse cells)")
    parser.add_argument("--seed", type=int, default=0, help="the concept draw's and the erasures' seed")
    parser.add_argument(
        "--eval-seeds", type=int, default=2, help="answer-set seeds per (style, object) prompt"
    )
    parser.add_argument("--model", default="canvas-sd", help="canvas-sd or a Canvas-world pipeline folder")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: min(2, CPU count))")
    parser.add_argument("--report-only", action="store_true", help="run nothing: gather the finished cells")
    return parser.parse_args(argv)


def parse_inputs(args) -> tuple[list[str], list[int], list[str]]:
    from erasure.methods import METHODS

    methods = list(dict.fromkeys(m.strip().lower() for m in args.methods.split(",") if m.strip()))
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise UsageError(
            f"unknown method {', '.join(unknown) or '(none)'}; valid methods: {', '.join(METHODS)}."
        )
    limit = len(KINDS[args.kind][1]) - 1  # at least one concept of the kind must remain to be retained
    try:
        ks = sorted({int(k) for k in args.k.split(",") if k.strip()})
    except ValueError:
        raise UsageError(f"--k must be comma-separated whole numbers, not {args.k!r}.") from None
    if not ks or ks[0] < 1 or ks[-1] > limit:
        raise UsageError(
            f"--k must lie between 1 and {limit} for {args.kind} (one must remain to be retained)."
        )
    modes = list(dict.fromkeys(m.strip() for m in args.mode.split(",") if m.strip()))
    if not modes or any(m not in MODES for m in modes):
        raise UsageError(f"--mode must be together, sequential or both, not {args.mode!r}.")
    if args.eval_seeds < 1:
        raise UsageError("--eval-seeds must be at least 1.")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1.")
    return methods, ks, modes


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        methods, ks, modes = parse_inputs(args)
        settings_path = args.out / "settings.json"
        settings = {"model": args.model, "seed": args.seed, "eval_seeds": args.eval_seeds}
        if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
            raise UsageError(f"{args.out} holds cells made with other settings; use another --out.")
        import torch

        from eval.evaluate import EvalSettings
        from eval.judges.models import load_judges
        from eval.report import machine_description
        from pipelines.loading import PipelineLoadError, load_pipeline

        threads = args.threads or max(1, min(2, os.cpu_count() or 1))
        torch.set_num_threads(threads)
        try:
            base, judges = load_pipeline(args.model), load_judges()
        except (PipelineLoadError, FileNotFoundError) as err:
            raise UsageError(str(err)) from None
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    base.set_progress_bar_config(disable=True)
    write_atomic(settings_path, json.dumps(settings) + "\n")
    eval_settings = EvalSettings(seeds=tuple(range(args.eval_seeds)), aliases=False)
    records = run_scale(
        base, methods, args.kind, ks, modes, judges, args.out, eval_settings, args.seed, args.model,
        finished_only=args.report_only,
    )  # fmt: skip
    # Every kind's finished cells in this folder go into the report, whichever run made them.
    other = [k for k in KINDS if k != args.kind]
    for kind_name in other:
        records += run_scale(
            base, methods, kind_name, range(1, len(KINDS[kind_name][1])), modes, judges, args.out,
            eval_settings, args.seed, args.model, finished_only=True,
        )  # fmt: skip
    command = "python -m eval.scale " + shlex.join(a for a in argv if a != "--report-only")
    meta = {"command": command, "machine": machine_description(torch.device("cpu"), threads), **settings}
    write_scale(args.out, records, meta)
    print(f"results written to {args.out / 'scale.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
