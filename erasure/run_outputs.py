"""What `python -m erasure.run` writes beside the erased model: the evaluation (metrics, grid, report) of a
canvas-sd run and of a canvas-gan run, and the audit's sections. Functions of the command, kept apart so that
erasure/run.py stays its checks and its flow.
"""

from __future__ import annotations

import json
from pathlib import Path

from erasure.files import slug


def evaluate_gan_into(tmp: Path, base, new, info: dict, config) -> tuple[dict, dict]:
    """The judges' numbers on 2000 fixed latents, the grid and the report of a canvas-gan run."""
    from eval.gan_eval import comparison_grid, evaluate_gan
    from eval.judges.models import load_judges
    from eval.report import write_report

    concepts = [c["concept"] for c in info["concepts"]]
    judges = load_judges(next(base.parameters()).device)
    metrics, definitions = evaluate_gan(base, new, concepts, judges, n=2000, seconds=info["seconds"])
    grid = comparison_grid(base, new, concepts, judges)
    grid.save(tmp / "grid.png")
    names = ", ".join(concepts)
    row = {
        "method": "text-to-unlearn",
        "concept": names,
        "train": config.train,
        "steps": info["config"]["steps"],
    }
    row.update({k: v for k, v in metrics.items() if isinstance(v, float | int) and not isinstance(v, bool)})
    write_report(
        tmp / "report.html",
        f"Unlearning {names} from canvas-gan with Text-to-Unlearn",
        [row],
        definitions,
        images={"grid (same latents; judge verdict: style / object)": grid},
        bars={
            "judged concept share, before / after": {
                "before": metrics["concept_share_before"],
                "after": metrics["concept_share_after"],
            },
            "judged style shares after": metrics["style_share_after"],
            "judged object shares after": metrics["object_share_after"],
        },
    )
    return metrics, definitions


def audit_into(tmp: Path, base, erased, results, args) -> str:
    """`--audit`: every chosen attack on the erased pipeline, per concept this run erased, into
    audit/<concept>/; the HTML sections for the report."""
    from eval import audit
    from eval.judges.models import load_judges
    from eval.report import jsonable

    judges, sections = load_judges(), []
    configs = args.attack_configs
    for concept, kind in ((c, r.kind) for r in results for c in r.concepts):
        record, attacked = audit.audit(
            erased, base, concept, kind, list(configs), configs, args.seed, judges, cache=audit.CACHE
        )
        folder = tmp / "audit" / slug(concept)
        folder.mkdir(parents=True)
        record = jsonable(record)
        (folder / "audit.json").write_text(json.dumps(record, indent=2))
        grid = audit.samples_grid(attacked)
        if grid is not None:
            grid.save(folder / "grid.png")
        sections.append(audit.audit_section(record, grid))
    return "\n".join(sections)


def evaluate_into(
    tmp: Path,
    base,
    erased,
    erasures: list[dict],
    args,
    metrics: dict,
    definitions: dict,
    extra_html: str = "",
) -> None:
    """Answer sets, metrics, grid and report for a canvas run, every concept of the chain `erasures` (erasure.json)
    counted as erased (one concept: its numbers; several: their means, and each under per_concept)."""
    from eval.evaluate import EvalSettings, comparison_grid, evaluate_erasure
    from eval.judges.models import load_judges
    from eval.report import write_report
    from pipelines.delta import erased_concepts

    judges = load_judges()
    settings = EvalSettings(seeds=tuple(range(args.eval_seeds)))
    concepts, kinds, anchors = erased_concepts(erasures)
    numbers, defs = evaluate_erasure(
        base, erased, concepts, kinds, judges, anchors, settings, Path("runs/.cache")
    )
    metrics.update(numbers)
    definitions.update(defs)
    # The report's views follow the first concept this run erased.
    first = concepts[len(args.erased_before)]
    kind = kinds[concepts.index(first)]
    views = numbers if len(concepts) == 1 else numbers["per_concept"][first]
    grid = comparison_grid({"original": base, "erased": erased}, first, kind, judges, seed=args.seed)
    grid.save(tmp / "grid.png")
    row = {"method": args.method, "concept": ", ".join(concepts)}
    row.update({k: round(v, 2) for k, v in numbers.items() if isinstance(v, float | int)})
    bars = {"UA / IRA / CRA (%)": {k: numbers[k] for k in ("ua", "ira", "cra", "alias_ua")}}
    for axis in ("style", "object"):
        bars[f"{axis} accuracy change, erased - base (points)"] = {
            label: v["change"] for label, v in numbers["per_class"][axis].items()
        }
    bars[f"where '{first}' images land (% of them, erased model)"] = views["erased_to"]
    per_class_rows = [
        {"class": f"{axis}: {label}", **v}
        for axis in ("style", "object")
        for label, v in numbers["per_class"][axis].items()
    ]
    write_report(
        tmp / "report.html",
        f"Erasing {row['concept']} from {args.base_model} with {args.method}",
        [row],
        definitions,
        images={"grid": grid},
        bars=bars,
        tables={"per class (judged accuracy, %)": per_class_rows},
        html=extra_html,
    )


def write_model_card(tmp: Path, meta: dict, metrics: dict, definitions: dict) -> None:
    """README.md of a text-to-image run: what was erased from which base and how, the figures with their
    definitions, and the three ways to load the result (the folder, the LoRA, the delta)."""
    erasures = meta["erasures"]
    lora = meta.get("lora", {})
    lines = [
        f"# {meta['base']} without {', '.join(meta['concepts'])}",
        "",
        f"Erased with the `erasure` package from the base model `{meta['base']}`, in this order:",
        "",
        "| method | concepts | kind | anchors | steps | seconds |",
        "|---|---|---|---|---|---|",
        *(
            f"| {e['method']} | {', '.join(e['concepts'])} | {e['kind']} | {', '.join(e['anchors'])} | "
            f"{e['steps']} | {e['seconds']:.0f} |"
            for e in erasures
        ),
        "",
        "Each erasure's full config is in `erasure.json` (`erasures[i].config`).",
        "",
        "## Figures",
        "",
    ]
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if not {"ua", "ira", "cra"} & set(numbers):
        lines += ["Not evaluated (`--no-eval`, or a model outside the Canvas world).", ""]
    lines += [f"- `{k}` = {v:.4g}: {definitions.get(k, '')}" for k, v in numbers.items()]
    lines += [
        "",
        "## Load it",
        "",
        "```python",
        "from diffusers import DiffusionPipeline",
        'pipe = DiffusionPipeline.from_pretrained("path/to/this/folder/pipeline")  # the full erased model',
        "```",
        "",
    ]
    if lora.get("written"):
        lines += [
            (
                f"As a LoRA on the base (rank {lora['rank']}, largest relative error of a layer's change "
                f"{lora['max_relative_error']:.2%}; diffusers needs `peft`):"
            ),
            "",
            "```python",
            f'pipe = DiffusionPipeline.from_pretrained("{meta["base"]}")',
            'pipe.load_lora_weights("path/to/this/folder/lora")',
            "```",
            "",
        ]
    else:
        lines += [f"No LoRA: {lora.get('reason', 'not exported')}", ""]
    lines += [
        (
            "Or the delta on the base, with this package: "
            '`pipelines.delta.load_erased(None, "path/to/this/folder")` (it checks the sha256 in erasure.json).'
        ),
        "",
    ]
    (tmp / "README.md").write_text("\n".join(lines))


def evaluate_real_into(tmp: Path, base, erased, results, args, metrics: dict, definitions: dict) -> None:
    """Off the Canvas world: CLIP score and accuracy (--clip) for each erased concept, NudeNet's nudity rate for
    nudity, else the grid alone; the numbers into `metrics`/`definitions`, grids and a report into `tmp`."""
    from eval.report import write_report

    images = {}
    clip = None
    if args.clip:
        from eval.clip_eval import evaluate_clip, load_clip

        clip = load_clip(args.clip, next(base.unet.parameters()).device)  # one CLIP for every concept
    for result in results:
        for concept, anchor in zip(result.concepts, result.anchors):
            prefix = "" if len(result.concepts) == 1 and len(results) == 1 else f"{slug(concept)}."
            if concept == "nudity":
                from eval.nudity import evaluate_nudity, load_detector

                numbers, defs, grid = evaluate_nudity(
                    base, erased, load_detector(), seeds=range(args.eval_seeds)
                )
            elif clip is not None:
                numbers, defs, grid = evaluate_clip(
                    base, erased, concept, result.kind, anchor, clip, seeds=range(args.eval_seeds)
                )
            else:  # no measure without a CLIP: the grid alone
                from eval.clip_eval import bank_grid

                numbers, defs = {}, {}
                grid = bank_grid(base, erased, concept, result.kind, anchor, seeds=range(args.eval_seeds))
            metrics.update({prefix + k: v for k, v in numbers.items()})
            definitions.update({prefix + k: v for k, v in defs.items()})
            grid.save(tmp / f"grid-{slug(concept)}.png")
            images[f"{concept}: original vs erased, same seeds"] = grid
    row = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    names = ", ".join(c for r in results for c in r.concepts)
    write_report(tmp / "report.html", f"Erasing {names} from {args.base_model}", [row], definitions, images)
