"""The UnlearnCanvas-style benchmark: erase every concept with every method, measure all on one shared answer set.

    OMP_WAIT_POLICY=PASSIVE python -m eval.bench --methods doco,esd,uce,ca --concepts styles --seeds 3 --out bench/

--concepts is `styles`, `objects`, `all` or a comma-separated list of world concepts (aliases name their concept).
Each (method, concept) cell erases with `erasure.engine.erase` (the method's Canvas defaults unless --steps) and is
measured by `eval.evaluate.evaluate_erasure` with the same prompts, seeds and judges; the base model's answer set is
generated once and cached in <out>/cache. Written to --out:
  cells/<method>/<concept>.json   one finished cell (numbers + definitions), written atomically: reruns skip it
  checkpoints/<method>/<concept>/ the running cell's training checkpoints: an interrupted cell resumes from them
  deltas/<method>/<concept>/      the erasure's delta.safetensors + erasure.json (storage = its size)
  results.json, results.csv       one record per (method, concept), every number, with definitions
  results.md                      means over concepts (rows = methods) per kind, then one table per concept
  plots/<kind>-<metric>.png       a bar chart per metric; plots/<kind>-ua_vs_ira.png, a UA-versus-IRA scatter
  grids/<concept>.png             original + every method on the same seed, judge verdict under each image
With --attacks (all, or a comma list of eval.attacks), every finished cell is also audited (eval.audit, the same
budgets and seed for every method; --budget attack.field=value changes a budget for all of them):
  attacks/<method>/<concept>.json one audit cell, written atomically: reruns skip it, and a cell made with another
                                  budget for some attack reruns that attack alone (the record says each budget)
  attack-grids/<method>-<concept>.png  attacked samples, judge verdict under each
  robustness.json, robustness.md  every audit, ASR per attack beside the base model's and the controls
  plots/robustness-<attack>.png   mean ASR per method
  attacks/oracle/<concept>.json   with --oracle FOLDER (erasure.train.sd --exclude C): the model that never knew
                                  C, its static metrics and relearning curve, beside every method's in robustness.md
--report-only runs nothing and rebuilds every table and plot from the cells already in --out: the way to gather
parallel runs (other methods or concepts, same settings) into one report. Under `accelerate launch --num_processes
N -m eval.bench ...` (or torchrun) the N processes share the cells (each on its own GPU, as its LOCAL_RANK says),
mark shards/<rank>.json when done, and the first one gathers every cell into the tables.
--device (default: cuda when there is one) is where the pipeline and the judges run; the erasures run on the
engine's Accelerator device. Bad input (unknown method or concept, a missing model or judges, an --out made with
other settings, an unusable --device) prints one sentence and exits with code 2. A command: it orchestrates the
engine and the evaluation library; the tables and plots are eval.results' and eval.robustness's.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from erasure.canvas.world import ARTIST_STYLES, OBJECTS, UnknownConceptError, canonical
from erasure.files import slug, write_atomic
from eval.launch import launched_shard, shard_marker, wait_for_shards
from eval.report import jsonable, machine_description, save_png
from eval.results import DEFINITIONS, write_results
from eval.robustness import reference_rows, write_robustness


class UsageError(Exception):
    """A user mistake: printed as one sentence, exit code 2."""


# --- input -------------------------------------------------------------------------------------------------------
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
        try:
            out.append(canonical(item))
        except UnknownConceptError:
            raise UsageError(
                f"unknown concept {item!r}; use styles, objects, all, or any of: "
                f"{', '.join(ARTIST_STYLES)}, {', '.join(OBJECTS)}."
            ) from None
    if not out:
        raise UsageError("--concepts is empty; use styles, objects, all or a comma-separated list.")
    return list(dict.fromkeys(out))


def cell_path(out: Path, method: str, concept: str) -> Path:
    return Path(out) / "cells" / method / f"{slug(concept)}.json"


def delta_dir(out: Path, method: str, concept: str) -> Path:
    return Path(out) / "deltas" / method / slug(concept)


def attack_path(out: Path, method: str, concept: str) -> Path:
    return Path(out) / "attacks" / method / f"{slug(concept)}.json"


def check_settings(out: Path, settings: dict, write: bool = True) -> None:
    """Cells from another model, seeds or steps must not mix with these: refuse such an --out (else record them)."""
    path = Path(out) / "settings.json"
    settings = jsonable(settings)
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
    from erasure.engine import erase
    from erasure.methods import METHODS
    from eval.evaluate import evaluate_erasure
    from pipelines.delta import DELTA_FILE, save_delta

    checkpoints = Path(out) / "checkpoints" / method / slug(concept)
    result = erase(
        base,
        concept,
        method=method,
        config=config,
        steps=steps if METHODS[method].Config.has_steps else None,  # --steps is for the iterative methods
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
        result.concepts,
        result.kind,
        judges,
        result.anchors,
        settings,
        Path(out) / "cache",
    )
    record = {
        "method": method,
        "concept": result.concepts[0],
        "kind": result.kind,
        "anchor": result.anchors[0],
    }
    record.update({k: v if isinstance(v, dict) else float(v) for k, v in numbers.items()})
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
    record = jsonable(record)
    write_atomic(cell_path(out, method, concept), json.dumps(record, indent=2) + "\n")
    shutil.rmtree(checkpoints, ignore_errors=True)
    return record


def oracle_cell(base, oracle, concept, kind, judges, out, attack_configs, seed, settings) -> dict:
    """The oracle's static metrics and relearning (eval.audit.oracle_record), cached as attacks/oracle/<concept>."""
    from eval import audit

    path = attack_path(out, "oracle", concept)
    if path.exists():
        return json.loads(path.read_text())
    record = audit.oracle_record(
        oracle,
        base,
        concept,
        kind,
        attack_configs,
        seed,
        judges,
        list(attack_configs),
        settings,
        Path(out) / "cache",
    )
    record = jsonable({"concept": concept, **record})
    write_atomic(path, json.dumps(record, indent=2) + "\n")
    return record


def stale_attacks(record: dict | None, attack_configs: dict) -> list[str]:
    """The attacks that an audit cell (None: none yet) lacks or ran with a budget other than `attack_configs`'."""
    done = (record or {}).get("attacks", {})
    return [
        name
        for name, config in attack_configs.items()
        if name not in done or done[name].get("config") != json.loads(json.dumps(jsonable(asdict(config))))
    ]


def run_audit_cell(
    base, method, concept, kind, judges, out, attack_configs: dict, seed: int, previous=None, stale=None
) -> dict:
    """Audit the cell's erased pipeline (rebuilt from its delta) with every attack, or with the `stale` ones of a
    `previous` record (their results replace its own); write its JSON atomically."""
    from eval import audit
    from pipelines.delta import erased_copy

    pipe = erased_copy(base, delta_dir(out, method, concept))
    names = list(stale or attack_configs)
    record, results = audit.audit(
        pipe, base, concept, kind, names, attack_configs, seed, judges, cache=Path(out) / "cache" / "audit"
    )
    if previous is not None:
        record = audit.merge_audits(previous, record)
    record = jsonable({"method": method, **record})
    grid = audit.samples_grid(results)
    if grid is not None and previous is None:  # a partial rerun keeps the full audit's grid
        save_png(grid, Path(out) / "attack-grids" / f"{method}-{slug(concept)}.png")
    write_atomic(attack_path(out, method, concept), json.dumps(record, indent=2) + "\n")
    return record


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
    attack_configs: dict | None = None,
    machine: str = "",
    oracles: dict | None = None,
    finished_only: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> list[dict]:
    """Every (method, concept) cell (finished ones are loaded, not rerun), then results, tables, plots and grids.

    `configs` maps a method to its Config (or a dict of its fields) instead of its defaults. `attack_configs`
    (attack name -> its Config) audits every cell too; `oracles` (concept -> a pipeline trained without it) adds
    the exact-unlearning reference for those concepts. `finished_only` runs nothing: the results and reports are
    rebuilt from the cells already in `out` (parallel runs over other methods or concepts write the same folder).
    `shard` = (i, n): this process runs the i-th of every n cells, audits and grids (`accelerate launch`, see
    main); with n > 1 it writes no tables, which the gathering run does. Returns the records.
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
    if attack_configs and not finished_only:  # the latest budgets; each audit cell records its own
        write_atomic(
            out / "attack_settings.json",
            json.dumps(jsonable({"attacks": {n: asdict(c) for n, c in attack_configs.items()}}), indent=2)
            + "\n",
        )
    audits, oracle_records = {}, {}
    oracles = oracles or {}
    cells = [(m, c, k) for c, k in concepts for m in methods]
    done = sum(cell_path(out, m, c).exists() for m, c, _ in cells)
    records = {}
    index, count = shard

    def mine(position: int) -> bool:
        return not finished_only and position % count == index

    with tqdm(total=len(cells), initial=done, desc="bench", unit="cell", disable=not progress) as bar:
        for concept_index, (concept, kind) in enumerate(concepts):
            for method_index, method in enumerate(methods):
                path = cell_path(out, method, concept)
                if path.exists():
                    records[method, concept] = json.loads(path.read_text())
                    continue
                if not mine(concept_index * len(methods) + method_index):
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
            for method_index, method in enumerate(methods if attack_configs else []):
                path = attack_path(out, method, concept)
                previous = json.loads(path.read_text()) if path.exists() else None
                stale = stale_attacks(previous, attack_configs)
                if not stale:
                    audits[method, concept] = previous
                    continue
                # not finished under these budgets; another process's, or its cell is not done yet
                if not mine(concept_index * len(methods) + method_index) or (method, concept) not in records:
                    continue
                audits[method, concept] = run_audit_cell(
                    base, method, concept, kind, judges, out, attack_configs, seed, previous, stale
                )
                asr = audits[method, concept]["asr"]
                bar.write(f"{method} {concept} ASR: " + ", ".join(f"{n} {v:.0f}" for n, v in asr.items()))
            cached_oracle = attack_path(out, "oracle", concept).exists()
            if attack_configs and concept in oracles and (cached_oracle or mine(concept_index)):
                oracle_records[concept] = oracle_cell(
                    base, oracles[concept], concept, kind, judges, out, attack_configs, seed, settings
                )
            grid_path = out / "grids" / f"{slug(concept)}.png"
            if grids and mine(concept_index) and not grid_path.exists():
                from pipelines.delta import erased_copy

                pipes = {"original": base}
                for method in methods:
                    if (delta_dir(out, method, concept) / "delta.safetensors").exists():
                        pipes[method] = erased_copy(base, delta_dir(out, method, concept))
                save_png(
                    comparison_grid(pipes, concept, kind, judges, seed=seed, settings=settings), grid_path
                )
            ordered = [records[m, c] for c, _ in concepts for m in methods if (m, c) in records]
            if count > 1:
                continue
            write_results(
                out, ordered, methods, {"model": model, "command": command, "eval": asdict(settings)}
            )
            if audits:
                done_audits = [audits[m, c] for c, _ in concepts for m in methods if (m, c) in audits]
                meta = {"model": model, "command": command, "machine": machine, "seed": seed}
                references = reference_rows(records, audits, oracle_records)
                write_robustness(out, done_audits, list(attack_configs), meta, references)
    return ordered


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
    parser.add_argument("--attacks", help="also audit every cell: all, or a comma list of eval.attacks")
    parser.add_argument("--budget", action="append", default=[], help="with --attacks: attack.field=value")
    parser.add_argument(
        "--oracle",
        action="append",
        default=[],
        help="with --attacks: a model trained without a concept (repeatable)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rebuild the results and reports from the cells already in --out",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    rank, processes = launched_shard()
    try:
        from erasure.methods import METHODS

        methods = parse_methods(args.methods, list(METHODS))
        concepts = parse_concepts(args.concepts)
        if args.seeds < 1:
            raise UsageError("--seeds must be at least 1.")
        if args.steps is not None and args.steps < 1:
            raise UsageError("--steps must be a positive number of steps.")
        if args.threads is not None and args.threads < 1:
            raise UsageError("--threads must be at least 1.")
        attack_configs = None
        if args.attacks or args.budget:
            from eval import audit

            try:
                attack_configs = audit.parse_budget(args.budget, audit.parse_attacks(args.attacks or "all"))
            except audit.UsageError as err:
                raise UsageError(str(err)) from None
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
        if args.oracle and not attack_configs:
            raise UsageError("--oracle is a reference for the attacks: use it with --attacks.")
        try:
            base = load_pipeline(args.model).to(device)
            judges = load_judges(device)
            oracles = {}
            for folder in args.oracle:
                info = Path(folder) / "oracle.json"
                if not info.is_file():
                    raise UsageError(
                        f"{folder} has no oracle.json: train one with erasure.train.sd --exclude."
                    )
                pipe = load_pipeline(folder).to(device)
                oracles.update({c: pipe for c in json.loads(info.read_text())["excluded"]})
        except (PipelineLoadError, FileNotFoundError) as err:
            raise UsageError(str(err)) from None
        bench = functools.partial(
            run_bench,
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
            # the command that makes every cell; --report-only only gathers them
            command="python -m eval.bench " + shlex.join(a for a in argv if a != "--report-only"),
            attack_configs=attack_configs,
            oracles=oracles,
            machine=machine_description(device, args.threads or max(1, min(2, os.cpu_count() or 1))),
        )
        if processes == 1 or args.report_only:
            bench(finished_only=args.report_only)
        else:  # accelerate launch: every process its share, then the first one gathers them all
            status = {"rank": rank, "status": "done"}
            try:
                bench(shard=(rank, processes))
            except Exception as err:
                status.update(status="failed", error=" ".join(str(err).split())[:300] or type(err).__name__)
                raise
            finally:
                write_atomic(shard_marker(args.out, rank), json.dumps(status) + "\n")
            if rank != 0:
                print(f"process {rank} of {processes}: its cells are in {args.out}")
                return 0
            try:
                wait_for_shards(args.out, processes)
            except RuntimeError as err:
                raise UsageError(str(err)) from None
            bench(finished_only=True)
    except (UsageError, UnknownConceptError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"results written to {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
