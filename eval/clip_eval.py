"""An erasure measured off the Canvas world, with an open_clip model the user names: `--clip NAME:PATH`.

    clip = load_clip("ViT-L-14:/models/open_clip_vit_l14.safetensors")
    numbers, definitions, grid = evaluate_clip(base, erased, "van gogh", "style", "painting", clip)

The prompt bank (assets/prompts/clip_bank.json) holds, per kind, prompts of four groups: `target` (the concept
named as erasure prompts name it), `paraphrase` (named in other words), `neighbour` (another concept of the same
kind, which must stay) and `unrelated`. Both models draw every prompt on the same seeds; CLIP then gives
  clip_score_<group>     mean over the group's images of 100 x cos(image embedding, its prompt's embedding)
  clip_accuracy_<group>  % of the group's images that CLIP reads as the named concept (the neighbour, for
                         `neighbour`) rather than the anchor: cos(image, verdict text of the name) > cos(image,
                         verdict text of the anchor), the verdict texts from the bank
for the base (`base_...`) and the erased model. Erasure should bring target and paraphrase accuracy down and keep
the neighbours' accuracy and the unrelated prompts' CLIP score where the base has them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from erasure.files import ASSETS

BANK = ASSETS / "prompts" / "clip_bank.json"
GROUPS = ("target", "paraphrase", "neighbour", "unrelated")
REAL_STYLE_ANCHOR = "painting"  # the default style anchor on real models (erasure.methods.request)


@dataclass
class ClipModel:
    """An open_clip model with its image preprocessing and tokenizer."""

    name: str
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    device: torch.device

    @torch.no_grad()
    def image_features(self, images: list) -> torch.Tensor:
        batch = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_image(batch).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)


def check_clip_spec(spec: str) -> tuple[str, str]:
    """(name, path) of `NAME:PATH`, an open_clip model name and a local checkpoint of it, checked without loading
    it; bad specs raise ValueError with one sentence."""
    import open_clip

    from eval.judges.models import register_judge_clip

    name, sep, path = spec.partition(":")
    if not sep or not name or not path:
        raise ValueError(
            f"--clip takes NAME:PATH (an open_clip model name and its checkpoint), not {spec!r}."
        )
    register_judge_clip()  # this package's own small CLIP is a valid name too
    if name not in open_clip.list_models():
        raise ValueError(f"{name!r} is not an open_clip model name (open_clip.list_models() lists them).")
    if not Path(path).is_file():
        raise ValueError(f"the CLIP checkpoint {path} does not exist.")
    return name, path


def load_clip(spec: str, device="cpu") -> ClipModel:
    """The open_clip model of `NAME:PATH` (safetensors, or a weights-only torch file; see check_clip_spec)."""
    import open_clip

    name, path = check_clip_spec(spec)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=path, device=device)
    except (RuntimeError, ValueError, OSError, KeyError) as err:
        reason = " ".join(str(err).split())[:160]
        raise ValueError(f"{path} is not a checkpoint of {name} ({reason}).") from None
    return ClipModel(name, model.eval(), preprocess, open_clip.get_tokenizer(name), torch.device(device))


def bank_prompts(concept: str, kind: str, anchor: str) -> list[dict]:
    """Every bank prompt for `concept` as {'group', 'prompt', 'name', 'verdict', 'anchor_verdict'}."""
    bank = json.loads(BANK.read_text())
    spec = bank[kind]
    subjects = spec["subjects"] or [""]

    def verdict(name: str) -> str:
        if kind == "style" and name == REAL_STYLE_ANCHOR:
            return "a painting"
        return spec["verdict"][0].format(name=name)

    rows = []
    for group in ("target", "paraphrase"):
        for template in spec[group]:
            for subject in subjects:
                prompt = template.format(concept=concept, subject=subject)
                rows.append({"group": group, "prompt": prompt, "name": concept})
    for neighbour in (n for n in spec["neighbours"] if n not in (concept, anchor)):
        for template in spec["neighbour"]:
            for subject in subjects:
                rows.append(
                    {
                        "group": "neighbour",
                        "prompt": template.format(neighbour=neighbour, subject=subject),
                        "name": neighbour,
                    }
                )
    rows += [{"group": "unrelated", "prompt": p, "name": None} for p in bank["unrelated"]]
    for row in rows:
        row["verdict"] = verdict(row["name"]) if row["name"] else None
        row["anchor_verdict"] = verdict(anchor)
    return rows


@torch.no_grad()
def draw_images(pipeline, prompts: list[str], seeds, steps: int, guidance: float, batch: int = 8) -> list:
    images = []
    for seed in seeds:
        for i in range(0, len(prompts), batch):
            generator = torch.Generator("cpu").manual_seed(seed * 100_003 + i)
            images += pipeline(
                prompts[i : i + batch],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generator,
            ).images
    return images


def draw_and_score(base, erased, prompts, seeds, steps: int, guidance: float, score):
    """Both models' images of `prompts` on the same seeds ({'original': [...], 'erased': [...]}) and `score`'s
    numbers of each, the base model's prefixed 'base_'."""
    drawn = {
        label: draw_images(p, prompts, seeds, steps, guidance)
        for label, p in (("original", base), ("erased", erased))
    }
    numbers = {}
    for label, images in drawn.items():
        prefix = "base_" if label == "original" else ""
        numbers.update({prefix + k: v for k, v in score(images).items()})
    return drawn, numbers


def clip_numbers(rows: list[dict], images: list, clip: ClipModel) -> dict[str, float]:
    """CLIP score and accuracy per group (module docstring) for `images[i]` drawn from `rows[i % len(rows)]`."""
    features = clip.image_features(images)
    prompt_text = clip.text_features([r["prompt"] for r in rows])
    names = sorted({r["verdict"] for r in rows if r["verdict"]} | {rows[0]["anchor_verdict"]})
    verdict_text = dict(zip(names, clip.text_features(names)))
    anchor = verdict_text[rows[0]["anchor_verdict"]]
    scores, hits = {g: [] for g in GROUPS}, {g: [] for g in GROUPS}
    for i, image in enumerate(features):
        row = rows[i % len(rows)]
        scores[row["group"]].append(100 * float(image @ prompt_text[i % len(rows)]))
        if row["verdict"]:
            hits[row["group"]].append(float(image @ verdict_text[row["verdict"]]) > float(image @ anchor))
    numbers = {f"clip_score_{g}": sum(v) / len(v) for g, v in scores.items() if v}
    numbers.update({f"clip_accuracy_{g}": 100 * sum(v) / len(v) for g, v in hits.items() if v})
    return numbers


def evaluate_clip(
    base,
    erased,
    concept: str,
    kind: str,
    anchor: str,
    clip: ClipModel,
    seeds=(0,),
    steps: int = 25,
    guidance: float = 7.5,
):
    """(numbers, definitions, grid image) of an erasure of `concept` (module docstring)."""
    rows = bank_prompts(concept, kind, anchor)
    prompts = [r["prompt"] for r in rows]
    drawn, numbers = draw_and_score(
        base, erased, prompts, seeds, steps, guidance, lambda images: clip_numbers(rows, images, clip)
    )
    count = len(prompts) * len(seeds)
    definitions = {
        f"clip_score_{g}": f"mean 100 x cos(image, its prompt) under {clip.name}, over the erased model's "
        f"'{g}' images of the bank (assets/prompts/clip_bank.json), {count} images in all, seeds {list(seeds)}"
        for g in GROUPS
    }
    definitions.update(
        {
            f"clip_accuracy_{g}": f"% of the erased model's '{g}' images that {clip.name} reads as the named "
            f"concept rather than the anchor {anchor!r} (cos to the bank's verdict texts)"
            for g in GROUPS[:3]
        }
    )
    definitions.update(
        {f"base_{k}": f"the same for the base model: {v}" for k, v in list(definitions.items())}
    )
    shown = first_of_each_group(rows)
    return (
        numbers,
        definitions,
        prompt_grid({k: [v[i] for i in shown] for k, v in drawn.items()}, [rows[i] for i in shown]),
    )


def first_of_each_group(rows: list[dict]) -> list[int]:
    return [next(i for i, r in enumerate(rows) if r["group"] == g) for g in GROUPS]


def prompt_grid(drawn: dict[str, list], rows: list[dict]):
    """Original vs erased, one bank prompt per row (`drawn[label][i]` drawn from `rows[i]`)."""
    from eval.grid import image_grid

    def column(images):
        return torch.stack([torch.from_numpy(np.asarray(im)).permute(2, 0, 1).float() / 255 for im in images])

    return image_grid(
        {label: column(images) for label, images in drawn.items()}, [r["prompt"][:48] for r in rows]
    )


def bank_grid(base, erased, concept: str, kind: str, anchor: str, seeds=(0,), steps: int = 25, guidance=7.5):
    """The grid of any model, without a CLIP: one prompt of each bank group, both models, the same seeds."""
    rows = bank_prompts(concept, kind, anchor)
    rows = [rows[i] for i in first_of_each_group(rows)]
    prompts = [r["prompt"] for r in rows]
    drawn = {
        label: draw_images(p, prompts, seeds[:1], steps, guidance)
        for label, p in (("original", base), ("erased", erased))
    }
    return prompt_grid(drawn, rows)
