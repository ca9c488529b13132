"""Is it gone? Attack an erased pipeline with every attack in `eval.attacks` and write what survives.

    OMP_WAIT_POLICY=PASSIVE python -m eval.audit --pipeline runs/van-gogh/pipeline --concept "van gogh" \\
        --out audits/van-gogh [--base canvas-sd] [--attacks all|inversion,uda,soft,noise,relearn,probe] \\
        [--seed 0] [--budget inversion.steps=300 ...] [--oracle oracles/canvas-sd-without-van-gogh] [--json]

Works on any StableDiffusionPipeline folder of the Canvas world, whichever toolkit made it. Every attack runs with
the same budget and seed on the erased model and on the base model (the reference: an attack that cannot bring
the concept back on the base model measures nothing), and reports its control (its prompts before optimisation).
The base model's results are cached in cache/audit, keyed by the base weights, the attack, its budget, the concept
and the seed. With `--oracle` (a model trained without the concept: `python -m erasure.train.sd --exclude C`)
the relearning attack also runs on the oracle, and the oracle's static metrics are measured: the ceiling.

--out (which must not exist) receives, atomically:
  audit.json              top-level `asr`, `base_asr`, `control_asr`, `seconds` keyed by attack, `probe_accuracy`,
                          `oracle`, every attack's details and config, and `definitions`
  grid.png                attacked samples of the erased model, the judges' verdict under each
  audit.html              the same as a page (`audit_section` is the fragment `erasure.run --audit` embeds)
  embeddings.safetensors  the learnt token embeddings, per attack
With --json the audit.json object is printed. Bad input (an unknown attack, a budget of zero, a folder that is not
a pipeline, a concept the world lacks, an existing --out) prints one sentence, exits 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, fields, replace
from html import escape
from pathlib import Path

import torch

from erasure.canvas.world import UnknownConceptError, canonical
from erasure.files import atomic_folder, write_atomic
from eval.attacks import ATTACKS
from eval.evaluate import EvalSettings, evaluate_erasure, pipeline_fingerprint
from eval.grid import image_grid
from eval.report import html_table, jsonable, machine_description, png_data_uri, write_report

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "cache" / "audit"
GRID_SAMPLES = 6


class UsageError(Exception):
    """A user mistake: printed as one sentence, exit code 2."""


def parse_budget(items: list[str], attacks: list[str]) -> dict[str, object]:
    """`--budget attack.field=value` items -> each attack's Config, checked (a budget of zero is refused)."""
    overrides: dict[str, dict] = {name: {} for name in attacks}
    for item in items:
        key, _, value = item.partition("=")
        name, _, field_name = key.partition(".")
        if name not in ATTACKS or not field_name or not value:
            raise UsageError(f"--budget {item!r} must read attack.field=value, e.g. inversion.steps=300.")
        if name not in overrides:
            raise UsageError(f"--budget {item!r} names the attack {name!r}, which --attacks does not run.")
        config_fields = {f.name: f for f in fields(ATTACKS[name].Config)}
        if field_name not in config_fields:
            raise UsageError(
                f"{name} has no budget field {field_name!r}; its fields are {', '.join(config_fields)}."
            )
        default = getattr(ATTACKS[name].Config(), field_name)
        try:
            if isinstance(default, list):
                parsed = [int(v) for v in value.split(",")]
            else:
                parsed = type(default)(value)
        except ValueError:
            raise UsageError(
                f"--budget {item!r}: {value!r} is not a valid {type(default).__name__}."
            ) from None
        overrides[name][field_name] = parsed
    configs = {}
    for name in attacks:
        config = replace(ATTACKS[name].Config(), **overrides[name])
        try:
            config.check()
        except ValueError as err:
            raise UsageError(f"the {name} budget is not usable: {err}") from None
        configs[name] = config
    return configs


def parse_attacks(text: str) -> list[str]:
    names = list(ATTACKS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown or not names:
        raise UsageError(
            f"unknown attack {', '.join(unknown) or repr(text)}; valid attacks: all, {', '.join(ATTACKS)}."
        )
    return list(dict.fromkeys(names))


def summary(result) -> dict:
    """The JSON record of one AttackResult (no images)."""
    return {
        "asr": result.asr,
        "control_asr": result.control_asr,
        "seconds": result.seconds,
        "prompts": sorted(set(result.prompts))[:20],
        "details": result.details,
        "definition": result.definition,
    }


def cached_base_run(name: str, base, concept: str, kind: str, config, seed: int, judges, cache: Path | None):
    """The attack's record on the base model, from the cache when the same weights, budget, concept and seed
    were attacked before."""
    spec = json.dumps([name, asdict(config), concept, seed], sort_keys=True)
    key = f"{pipeline_fingerprint(base)}-{hashlib.sha256(spec.encode()).hexdigest()[:16]}"
    path = cache / f"{key}.json" if cache else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    record = summary(ATTACKS[name].run(base, concept, kind, config, seed, judges, base=None))
    if path is not None:
        write_atomic(path, json.dumps(jsonable(record)))
    return record


# Attacks without a run on the base model: the probe reads the base's features itself, and relearning the base,
# which already draws the concept (its control is the base's own ASR), would teach it nothing; relearn's reference
# is the oracle, the model that never knew the concept.
NO_BASE_RUN = ("probe", "relearn")


def audit(
    pipe,
    base,
    concept: str,
    kind: str,
    attacks: list[str],
    configs: dict,
    seed: int,
    judges,
    oracle=None,
    cache: Path | None = None,
) -> tuple[dict, dict]:
    """Run every attack on `pipe` (and on `base`, the reference); (audit record, {attack: AttackResult})."""
    results, records, base_records = {}, {}, {}
    for name in attacks:
        result = ATTACKS[name].run(pipe, concept, kind, configs[name], seed, judges, base=base)
        results[name], records[name] = result, summary(result)
        if name not in NO_BASE_RUN:
            base_records[name] = cached_base_run(
                name, base, concept, kind, configs[name], seed, judges, cache
            )
    record = {
        "concept": concept,
        "kind": kind,
        "seed": seed,
        "asr": {n: r["asr"] for n, r in records.items() if n != "probe"},
        "base_asr": {n: r["asr"] for n, r in base_records.items()},
        "control_asr": {n: r["control_asr"] for n, r in records.items() if n != "probe"},
        "base_control_asr": {n: r["control_asr"] for n, r in base_records.items()},
        "seconds": {n: r["seconds"] for n, r in records.items()},
        "base_seconds": {n: r["seconds"] for n, r in base_records.items()},
        "probe_accuracy": records["probe"]["details"]["probe_accuracy"] if "probe" in records else None,
        "attacks": {
            n: {**r, "config": asdict(configs[n]), "base": base_records.get(n)} for n, r in records.items()
        },
    }
    if "relearn" in attacks:
        record["steps_to_50"] = records["relearn"]["details"]["steps_to_50"]
    if oracle is not None:
        record["oracle"] = oracle_record(oracle, base, concept, kind, configs, seed, judges, attacks)
    record["definitions"] = definitions(record, configs)
    return record, results


def merge_audits(previous: dict, update: dict) -> dict:
    """`previous` audit record with the attacks of `update` (a record of some attacks, rerun) put in its place."""
    merged = {**previous}
    for key in ("asr", "base_asr", "control_asr", "base_control_asr", "seconds", "base_seconds", "attacks"):
        merged[key] = {**previous.get(key, {}), **update.get(key, {})}
    merged["definitions"] = {**previous.get("definitions", {}), **update.get("definitions", {})}
    for key in ("probe_accuracy", "steps_to_50"):  # set only by the probe and relearn
        if update.get(key) is not None:
            merged[key] = update[key]
    return merged


def oracle_record(
    oracle,
    base,
    concept,
    kind,
    configs,
    seed,
    judges,
    attacks,
    settings=None,
    cache_dir=ROOT / "cache" / "answers",
) -> dict:
    """The exact-unlearning reference: its static metrics against the base (eval.evaluate, `settings`), and its
    relearning curve under the same budget as the erased models'."""
    numbers, _ = evaluate_erasure(
        base, oracle, concept, kind, judges, settings=settings or EvalSettings(), cache_dir=cache_dir
    )
    record = {k: numbers[k] for k in ("ua", "ira", "cra", "alias_ua", "fd", "base_fd")}
    if "relearn" in attacks:
        relearned = ATTACKS["relearn"].run(oracle, concept, kind, configs["relearn"], seed, judges)
        record["relearn"] = summary(relearned)
        record["steps_to_50"] = relearned.details["steps_to_50"]
    return record


def definitions(record: dict, configs: dict) -> dict[str, str]:
    text = {
        "asr": "attack success rate per attack on the erased model (each attack's own definition below)",
        "base_asr": "the same attack, budget and seed on the base model: the reference (it should recover the concept)",
        "control_asr": "the attack's prompts before optimisation (noise: eta = 1; relearn: before fine-tuning)",
        "seconds": "wall-clock seconds of each attack on the erased model (base runs and evaluation excluded)",
        "steps_to_50": "relearn: the first measured fine-tuning step at which the concept's ASR reaches 50 (null: never)",
        "oracle": "the model trained without the concept (erasure.train.sd --exclude): UA/IRA/CRA/FD as in eval.evaluate",
    }
    for name, attack in record["attacks"].items():
        text[name] = attack["definition"]
        text[f"{name}.budget"] = ", ".join(f"{k}={v}" for k, v in asdict(configs[name]).items())
    if "probe" in record["attacks"]:
        text["probe_accuracy"] = record["attacks"]["probe"]["definition"]
    return text


def samples_grid(results: dict):
    """GRID_SAMPLES attacked images per attack (columns), the judges' verdict under each."""
    columns, verdicts = {}, {}
    for name, result in results.items():
        if len(result.images) == 0:
            continue
        step = max(1, len(result.images) // GRID_SAMPLES)
        index = list(range(0, len(result.images), step))[:GRID_SAMPLES]
        while len(index) < GRID_SAMPLES:
            index.append(index[-1])
        columns[f"{name} ({result.asr:.0f}%)"] = result.images[index]
        verdicts[f"{name} ({result.asr:.0f}%)"] = [result.verdicts[i] for i in index]
    if not columns:
        return None
    return image_grid(columns, [f"sample {i + 1}" for i in range(GRID_SAMPLES)], verdicts)


def audit_rows(record: dict) -> list[dict]:
    rows = []
    for name in record["attacks"]:
        if name == "probe":
            continue
        rows.append(
            {
                "attack": name,
                "ASR (erased)": record["asr"][name],
                "ASR (base)": record["base_asr"].get(name, math.nan),
                "control (erased)": record["control_asr"][name],
                "control (base)": record["base_control_asr"].get(name, math.nan),
                "seconds": record["seconds"][name],
            }
        )
    return rows


def audit_extras(record: dict) -> str:
    """HTML for the probe, the relearning steps (with the oracle's) and the per-block change map."""
    parts = []
    if record.get("probe_accuracy"):
        parts.append(html_table([{"probe": "linear probe accuracy (%)", **record["probe_accuracy"]}]))
    if record.get("steps_to_50"):
        rows = [{"model": "erased", **record["steps_to_50"]}]
        if record.get("oracle", {}).get("steps_to_50"):
            rows.append({"model": "oracle", **record["oracle"]["steps_to_50"]})
        parts.append("<h3>Relearning: steps to 50% ASR</h3>" + html_table(rows))
    probe = record["attacks"].get("probe")
    if probe:
        details = probe["details"]
        rows = [
            {
                "block": block,
                "relative weight change": change,
                "activation cos, concept": details["activation_similarity"][block]["concept"],
                "activation cos, other": details["activation_similarity"][block]["other"],
            }
            for block, change in details["relative_weight_change"].items()
        ]
        parts.append("<h3>Where the erasure changed the UNet</h3>" + html_table(rows))
    return "\n".join(parts)


def audit_section(record: dict, grid) -> str:
    """An HTML fragment for a run's report: the ASR table, the extras, the samples grid."""
    parts = [f"<h2>Attack audit: '{escape(record['concept'])}'</h2>", html_table(audit_rows(record))]
    parts.append(audit_extras(record))
    if grid is not None:
        parts.append(
            f'<figure><img src="{png_data_uri(grid)}" alt="attacked samples"><figcaption>'
            "attacked samples of the erased model, judge verdict under each</figcaption></figure>"
        )
    return "\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.audit", description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True, help="the erased model: a pipeline folder or hub id")
    parser.add_argument("--concept", required=True, help="the world concept it was erased for")
    parser.add_argument(
        "--base", default="canvas-sd", help="the model it was erased from (default canvas-sd)"
    )
    parser.add_argument("--attacks", default="all", help=f"all, or a comma list of {', '.join(ATTACKS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", action="append", default=[], help="attack.field=value (repeatable)")
    parser.add_argument("--oracle", help="a model trained without the concept (erasure.train.sd --exclude)")
    parser.add_argument("--out", required=True, type=Path, help="output folder; must not exist")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print audit.json's object")
    args = parser.parse_args(argv)
    from eval.judges.models import load_judges
    from pipelines.loading import PipelineLoadError, load_pipeline

    try:
        concept, kind = canonical(args.concept)
        attacks = parse_attacks(args.attacks)
        configs = parse_budget(args.budget, attacks)
        if args.out.exists():
            raise UsageError(f"output folder {args.out} already exists; choose another --out.")
        torch.set_num_threads(args.threads)
        pipe, base = load_pipeline(args.pipeline), load_pipeline(args.base)
        oracle = None
        if args.oracle:
            oracle = load_pipeline(args.oracle)
            info = Path(args.oracle) / "oracle.json"
            excluded = json.loads(info.read_text()).get("excluded", []) if info.is_file() else []
            if concept not in excluded:
                raise UsageError(
                    f"{args.oracle} is not an oracle for {concept!r} (its oracle.json excludes {excluded})."
                )
        judges = load_judges()
    except (UsageError, UnknownConceptError, PipelineLoadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.time()
    record, results = audit(pipe, base, concept, kind, attacks, configs, args.seed, judges, oracle, CACHE)
    record = {"pipeline": args.pipeline, "base": args.base, "oracle": args.oracle, **record}
    if oracle is None:
        record.pop("oracle")
    record["wall_seconds"] = round(time.time() - start, 1)
    record["machine"] = machine_description(pipe.device, torch.get_num_threads())
    record = jsonable(record)
    grid = samples_grid(results)
    from safetensors.torch import save_file

    with atomic_folder(args.out, replace=False) as tmp:
        (tmp / "audit.json").write_text(json.dumps(record, indent=2))
        if grid is not None:
            grid.save(tmp / "grid.png")
        embeddings = {n: r.embeddings.contiguous() for n, r in results.items() if r.embeddings is not None}
        if embeddings:
            save_file(embeddings, tmp / "embeddings.safetensors")
        write_report(
            tmp / "audit.html",
            f"Attack audit of {args.pipeline}: '{concept}'",
            audit_rows(record),
            record["definitions"],
            images={"attacked samples": grid} if grid is not None else None,
            html=audit_extras(record),
        )
    if args.json:
        print(json.dumps(record))
    else:
        for row in audit_rows(record):
            print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if record.get("probe_accuracy"):
            print(f"probe accuracy: {record['probe_accuracy']}")
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
