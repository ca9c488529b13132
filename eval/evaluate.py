"""Evaluate one erasure on the Canvas world: the UnlearnCanvas-style numbers, a grid, and their definitions.

The same function serves `python -m erasure.run` and the benchmark, so every method is measured on one answer set
(the same prompts, seeds and judges). It only sees plain diffusers pipelines: it never imports a method, so any
Canvas-world folder can be scored, whichever toolkit made it:

    OMP_WAIT_POLICY=PASSIVE python -m eval.evaluate --pipeline runs/van-gogh/pipeline --concept "van gogh" [--json]

compares the folder with `--base` (default canvas-sd) on the answer set and prints every number with its
definition (`--json`: one JSON object). Bad input (a folder that is not a pipeline, a concept the world lacks,
missing judges, fewer than one seed) prints one sentence and exits with code 2.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from erasure.canvas.data import CHECK_SEED_BASE, render_pool, to_tensor
from erasure.canvas.world import (
    ARTIST_STYLES,
    OBJECT_ALIASES,
    OBJECTS,
    PLAIN,
    STYLE_ALIASES,
    STYLES,
    caption,
    default_anchor,
)
from eval.answer_set import AnswerSet, generate_answer_set, world_items
from eval.grid import image_grid
from eval.judges.models import Judges, world_prompt
from eval.metrics import (
    anchor_accuracy,
    clip_accuracy,
    clip_score,
    erased_to,
    frechet_distance,
    per_class_accuracy,
    unlearning_scores,
)

DEFAULT_SEEDS = (0, 1)
REAL_SEEDS = 4


@dataclass
class EvalSettings:
    """How the answer set is generated: the same for every model compared."""

    seeds: tuple[int, ...] = DEFAULT_SEEDS
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    batch_size: int = 65
    aliases: bool = True  # also judge the alias prompts (alias_ua); eval.scale leaves them out


def alias_items(concept: str, kind: str) -> list[tuple[str, str, str]]:
    """Prompts naming the concept only by its aliases (held out of erasure training), world template 0."""
    if kind == "style":
        return [
            (caption(concept, o, 0, style_name=a), concept, o)
            for a in STYLE_ALIASES[concept]
            for o in OBJECTS
        ]
    return [
        (caption(s, concept, 0, object_name=a), s, concept) for a in OBJECT_ALIASES[concept] for s in STYLES
    ]


def pipeline_fingerprint(pipe) -> str:
    """A short hash of the UNet and text-encoder weights, to cache a base model's answer set safely."""
    h = hashlib.sha256()
    for module in (pipe.unet, pipe.text_encoder):
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().float().numpy().tobytes()[:4096])
            h.update(str(float(tensor.float().sum())).encode())
    return h.hexdigest()[:16]


def answer_set(
    pipe, items, judges: Judges, settings: EvalSettings, desc: str, cache_dir: Path | None = None
) -> AnswerSet:
    """Generate (or load from cache) the judged answer set of `pipe` for `items` x settings.seeds."""
    key = None
    if cache_dir is not None:
        spec = json.dumps(
            [items, list(settings.seeds), settings.num_inference_steps, settings.guidance_scale]
        )
        key = f"{pipeline_fingerprint(pipe)}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
        path = Path(cache_dir) / f"{key}.pt"
        if path.exists():
            data = torch.load(path, weights_only=True)
            return AnswerSet(**data)
    result = generate_answer_set(
        pipe,
        items,
        list(settings.seeds),
        judges,
        batch_size=settings.batch_size,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        desc=desc,
    )
    if key is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(cache_dir) / f"{key}.{os.getpid()}.tmp"  # parallel benches may write the same key
        torch.save(vars(result), tmp)
        tmp.replace(Path(cache_dir) / f"{key}.pt")
    return result


def real_features(judges: Judges, erased: list[tuple[str, str]]) -> torch.Tensor:
    """Judge features of held-out real renders (REAL_SEEDS per pair), every pair naming an erased (kind, concept)
    excluded."""
    gone = {concept for _, concept in erased}
    styles = [s for s in STYLES if s not in gone]
    objects = [o for o in OBJECTS if o not in gone]
    images, _, _ = render_pool(
        range(CHECK_SEED_BASE + 100, CHECK_SEED_BASE + 100 + REAL_SEEDS), styles, objects
    )
    return judges.features(to_tensor(images))


def _labels(answers: AnswerSet, kind: str) -> list[str]:
    return answers.styles if kind == "style" else answers.objects


def _non_target(answers: AnswerSet, erased: list[tuple[str, str]]) -> AnswerSet:
    """The images whose prompt names none of the erased (kind, concept)s."""
    gone = {concept for _, concept in erased}
    keep = [
        i for i, (s, o) in enumerate(zip(answers.styles, answers.objects)) if s not in gone and o not in gone
    ]
    return answers.subset(keep)


def _target(answers: AnswerSet, concept: str, kind: str) -> AnswerSet:
    return answers.subset([i for i, label in enumerate(_labels(answers, kind)) if label == concept])


# Numbers of one erased concept; with several concepts they are reported per concept and, if scalar, averaged.
PER_CONCEPT = (
    "ua",
    "ira",
    "cra",
    "alias_ua",
    "clip_score",
    "base_clip_score",
    "clip_accuracy",
    "base_ua",
    "base_ira",
    "base_cra",
    "anchor_accuracy",
    "base_anchor_accuracy",
    "erased_to",
    "base_erased_to",
)


def evaluate_erasure(
    base,
    erased,
    concept: str | list[str],
    kind: str | list[str],
    judges: Judges,
    anchor: str | list[str | None] | None = None,
    settings: EvalSettings | None = None,
    cache_dir: Path | None = None,
) -> tuple[dict, dict]:
    """(numbers, definitions) for erasing `concept` (one name, or a list of every concept erased so far) from
    `base` into `erased`, both diffusers pipelines. `kind` and `anchor`: one for all concepts or one per concept.

    Each answer set is generated once. With several concepts, every one of them counts as erased: none is part of
    another's IRA or CRA or of the FD's images; the numbers of each concept go to `per_concept` and the top-level
    ones are their means (`per_class`, `fd` and `base_fd` are shared).
    """
    settings = settings or EvalSettings()
    concepts = [concept] if isinstance(concept, str) else list(concept)
    kinds = [kind] * len(concepts) if isinstance(kind, str) else list(kind)
    anchors = list(anchor) if isinstance(anchor, list | tuple) else [anchor] * len(concepts)
    anchors = [a or default_anchor(c, k) for c, k, a in zip(concepts, kinds, anchors)]
    gone = list(zip(kinds, concepts))
    items = world_items()
    n_seeds = len(settings.seeds)
    base_answers = answer_set(base, items, judges, settings, "answer set (original)", cache_dir)
    erased_answers = answer_set(erased, items, judges, settings, "answer set (erased)")
    base_records, erased_records = base_answers.records(), erased_answers.records()
    aliases = (
        [item for c, k in zip(concepts, kinds) for item in alias_items(c, k)] if settings.aliases else []
    )
    if aliases:
        alias_answers = answer_set(erased, aliases, judges, settings, "alias prompts (erased)")

    per_concept = {}
    for c, k, a in zip(concepts, kinds, anchors):
        others = [o for o in concepts if o != c]
        scores = unlearning_scores(erased_records, c, k, others)
        base_scores = unlearning_scores(base_records, c, k, others)
        alias_preds = []
        if aliases:
            alias = _target(alias_answers, c, k)
            alias_preds = alias.pred_styles if k == "style" else alias.pred_objects
        target = _target(erased_answers, c, k)
        target_texts = [world_prompt(s, o) for s, o in zip(target.styles, target.objects)]
        if k == "style":
            anchor_texts = [world_prompt(a, o) for o in target.objects]
        else:
            anchor_texts = [world_prompt(s, a) for s in target.styles]
        image_emb = judges.clip_image(target.images)
        target_emb, anchor_emb = judges.clip_text(target_texts), judges.clip_text(anchor_texts)
        per_concept[c] = {
            "ua": scores["ua"],
            "ira": scores["ira"],
            "cra": scores["cra"],
            "alias_ua": 100.0 * sum(p != c for p in alias_preds) / len(alias_preds)
            if alias_preds
            else math.nan,
            "clip_score": clip_score(image_emb, target_emb),
            "base_clip_score": clip_score(judges.clip_image(_target(base_answers, c, k).images), target_emb),
            "clip_accuracy": clip_accuracy(image_emb, target_emb, anchor_emb),
            "base_ua": base_scores["ua"],
            "base_ira": base_scores["ira"],
            "base_cra": base_scores["cra"],
            "anchor_accuracy": anchor_accuracy(erased_records, a, k),
            "base_anchor_accuracy": anchor_accuracy(base_records, a, k),
            "erased_to": erased_to(erased_records, c, k),
            "base_erased_to": erased_to(base_records, c, k),
        }

    real = real_features(judges, gone)
    numbers = {
        key: sum(v[key] for v in per_concept.values()) / len(per_concept)
        for key in PER_CONCEPT
        if not isinstance(per_concept[concepts[0]][key], dict)
    }
    numbers.update(
        fd=frechet_distance(judges.features(_non_target(erased_answers, gone).images), real),
        base_fd=frechet_distance(judges.features(_non_target(base_answers, gone).images), real),
        per_class=per_class_accuracy(base_records, erased_records),
    )
    if len(concepts) == 1:
        numbers.update(per_concept[concepts[0]])
    else:
        numbers["per_concept"] = per_concept
    return numbers, _definitions(concepts, kinds, anchors, len(items), n_seeds, len(aliases), settings)


def _definitions(concepts, kinds, anchors, n_items, n_seeds, n_alias, settings) -> dict[str, str]:
    """What each number of `evaluate_erasure` means, for these concepts and this answer set."""
    names = ", ".join(f"'{c}'" for c in concepts)
    several = len(concepts) > 1
    if len(set(kinds)) == 1:
        what, other = kinds[0], "object" if kinds[0] == "style" else "style"
    else:
        what, other = "concept", "other kind's concept"
    seeds = f"seeds {list(settings.seeds)}, DDIM {settings.num_inference_steps} steps, guidance {settings.guidance_scale}"
    judge = "style / object judges (assets/judges, top-1)"
    mean = " (mean over the erased concepts; per_concept has each)" if several else ""
    text = {
        "answer_set": f"{n_items} prompts (every style x object, world template 0) x {n_seeds} seeds = {n_items * n_seeds} images per model; {seeds}",
        "ua": f"unlearning accuracy: 100 - {judge} accuracy on images prompted with the erased {what} {names}{mean}",
        "ira": (
            f"in-domain retain accuracy: mean {what} accuracy over the {what}s not erased"
            + (" ('plain' excluded)" if what != "object" else "")
            + mean
        ),
        "cra": f"cross-domain retain accuracy: mean {other} accuracy over all answer-set images, per {other} not erased{mean}",
        "alias_ua": f"100 - {what} accuracy on {n_alias} images whose prompts name {names} only by aliases (never seen in erasure){mean}",
        "fd": f"Frechet distance of judge features (style+object penultimate), erased images vs {REAL_SEEDS} held-out real renders per pair, pairs naming {names} excluded",
        "base_fd": "the same Frechet distance for the original model",
        "clip_score": f"judge-clip: mean 100*max(cos(image, text), 0) over the erased model's images of {names} and their own prompts{mean}",
        "base_clip_score": "the same CLIP score for the original model",
        "clip_accuracy": f"judge-clip: % of the erased model's images of {names} closer to the target text than to the anchor text ({', '.join(anchors)}){mean}",
        "base_ua": "UA of the original model on the same answer set",
        "base_ira": "IRA of the original model on the same answer set, the same concepts left out",
        "base_cra": "CRA of the original model on the same answer set, the same concepts left out",
        "anchor_accuracy": (
            f"{judge} accuracy on the images prompted with the anchor itself ({', '.join(anchors)}), which IRA "
            f"leaves out: an erasure must not draw its anchor as the erased {what}{mean}"
        ),
        "base_anchor_accuracy": "the same accuracy for the original model",
        "per_class": (
            f"every style's style accuracy and every object's object accuracy ({judge}) on the answer set, base and "
            "erased, and their change (erased - base, percentage points)"
        ),
        "erased_to": f"where images of {names} land: % of the erased model's images prompted with each that its kind's judge reads as each label",
        "base_erased_to": "the same histogram for the original model",
    }
    if several:
        text["per_concept"] = "the numbers above for each erased concept; top-level values are their means"
    return text


def grid_rows(concept: str, kind: str) -> list[tuple[str, str, str]]:
    """(prompt, style, object) rows of an erasure's grid: the target's prompts, its aliases, neighbouring
    concepts and other objects."""
    if kind == "style":
        neighbours = [s for s in ARTIST_STYLES if s != concept][:2]
        rows = [(caption(concept, o), concept, o) for o in OBJECTS[:2]]
        rows += [
            (caption(concept, OBJECTS[0], 0, style_name=a), concept, OBJECTS[0])
            for a in STYLE_ALIASES[concept]
        ]
        rows += [(caption(s, OBJECTS[0]), s, OBJECTS[0]) for s in neighbours]
        return rows + [(caption(PLAIN, o), PLAIN, o) for o in OBJECTS[2:4]]
    neighbours = [o for o in OBJECTS if o != concept][:2]
    rows = [(caption(s, concept), s, concept) for s in (PLAIN, ARTIST_STYLES[0])]
    rows += [(caption(PLAIN, concept, 0, object_name=a), PLAIN, concept) for a in OBJECT_ALIASES[concept]]
    rows += [(caption(PLAIN, o), PLAIN, o) for o in neighbours]
    return rows + [(caption(s, neighbours[0]), s, neighbours[0]) for s in ARTIST_STYLES[1:3]]


def comparison_grid(
    pipes: dict, concept: str, kind: str, judges: Judges, seed: int = 0, settings: EvalSettings | None = None
):
    """`grid_rows` of the concept, one column per pipeline, the same seed, the judges' verdict under each image."""
    settings = settings or EvalSettings()
    rows = grid_rows(concept, kind)
    columns, verdicts = {}, {}
    for name, pipe in pipes.items():
        answers = generate_answer_set(
            pipe,
            rows,
            [seed],
            judges,
            batch_size=settings.batch_size,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            desc=f"grid ({name})",
        )
        columns[name] = answers.images
        verdicts[name] = [f"{s} / {o}" for s, o in zip(answers.pred_styles, answers.pred_objects)]
    return image_grid(columns, [r[0] for r in rows], verdicts)


def main(argv=None) -> int:
    import argparse
    import sys

    from erasure.canvas.world import UnknownConceptError, canonical
    from eval.judges.models import load_judges
    from eval.report import format_numbers
    from pipelines.loading import PipelineLoadError, load_pipeline
    from pipelines.lora import load_lora

    parser = argparse.ArgumentParser(prog="python -m eval.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", help="the erased model: a pipeline folder or hub id")
    parser.add_argument(
        "--lora",
        help="or: the erased model is --base with this LoRA (a run's lora/ folder) loaded by diffusers",
    )
    parser.add_argument(
        "--concept", required=True, help="the world concept it was erased for (name or alias)"
    )
    parser.add_argument(
        "--base", default="canvas-sd", help="the model it was erased from (default canvas-sd)"
    )
    parser.add_argument("--anchor", help="what the concept should have become (default: the world's anchor)")
    parser.add_argument("--seeds", type=int, default=len(DEFAULT_SEEDS), help="answer-set seeds per prompt")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args(argv)
    try:
        if bool(args.pipeline) == bool(args.lora) or not args.concept:
            raise ValueError(
                'name the --pipeline (or the --lora) to score and its --concept (for example --concept "van gogh").'
            )
        if args.seeds < 1:
            raise ValueError("--seeds must be at least 1.")
        concept, kind = canonical(args.concept)
        anchor = None
        if args.anchor:
            anchor, anchor_kind = canonical(args.anchor, allow_plain=True)
            if anchor_kind != kind:
                raise ValueError(
                    f"the anchor of the {kind} {concept!r} must be a {kind} too, not {anchor!r}."
                )
        import torch

        torch.set_num_threads(2)
        base = load_pipeline(args.base)
        erased = (
            load_pipeline(args.pipeline) if args.pipeline else load_lora(load_pipeline(args.base), args.lora)
        )
        judges = load_judges()
    except (ValueError, PipelineLoadError, UnknownConceptError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = EvalSettings(seeds=tuple(range(args.seeds)))
    numbers, definitions = evaluate_erasure(base, erased, concept, kind, judges, anchor, settings)
    if args.json:
        print(
            json.dumps(
                {
                    "pipeline": args.pipeline or f"{args.base} + LoRA {args.lora}",
                    "base": args.base,
                    "concept": concept,
                    **numbers,
                    "definitions": definitions,
                }
            )
        )
    else:
        print(
            f"{args.pipeline or args.base + ' + LoRA ' + args.lora} against {args.base}, {concept} ({kind}):"
        )
        print(format_numbers(numbers, definitions))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
