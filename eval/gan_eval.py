"""Evaluate a generator, or a GAN unlearning, on the Canvas world with the judges.

    numbers, definitions = evaluate_gan(before, after, ["van gogh"], load_judges())
    stats = judged_stats(sample(generator, fixed_latents(generator, 520, 1234)), judges, real_features)

Both generators draw the same `n` fixed latents (const noise); the judges (assets/judges, independent of canvas-clip,
which guided the unlearning) say which style and object every sample shows. Each number's definition is returned
beside it and lands in metrics.json and report.html.
"""

from __future__ import annotations

import time
from collections import Counter

import torch
from scipy.stats import wasserstein_distance

from erasure.canvas.data import CHECK_SEED_BASE, render_pool, to_tensor
from erasure.canvas.world import OBJECTS, STYLES, canonical
from eval.grid import image_grid
from eval.judges.models import Judges, world_prompt
from eval.metrics import frechet_distance
from pipelines.stylegan import Generator, to_unit

EVAL_SEED = 2024  # the evaluation's fixed latents; unlearning pools its latents from other seeds
REAL_SEEDS = range(CHECK_SEED_BASE + 300, CHECK_SEED_BASE + 316)  # 16 held-out renders per (style, object)
MONITOR_REAL_SEEDS = range(CHECK_SEED_BASE + 200, CHECK_SEED_BASE + 204)  # train_gan's logged FD, gan_quality
CLASSES = {"style": STYLES, "object": OBJECTS}


# --- the metrics, one function each ------------------------------------------------------------------------------
def histogram(labels: list[str], classes) -> dict[str, float]:
    """Share of `labels` equal to each class: count(c) / len(labels)."""
    counts = Counter(labels)
    return {c: counts[c] / max(len(labels), 1) for c in classes}


def rest_tv(before: list[str], after: list[str], classes, erased) -> float:
    """TV = 1/2 sum_{c in K} |p(c) - q(c)|, K = classes minus `erased`, p(c) = #before judged c / #before judged in K.

    q likewise for `after`: both histograms are renormalised over the classes that were not erased, so moving the
    erased samples elsewhere counts only as far as it changes the *relative* frequency of the other classes.
    0 = the same; 1 = disjoint. NaN when either side has no sample in K.
    """
    kept = [c for c in classes if c not in set(erased)]
    counts_b, counts_a = Counter(before), Counter(after)
    total_b, total_a = sum(counts_b[c] for c in kept), sum(counts_a[c] for c in kept)
    if not total_b or not total_a:
        return float("nan")
    return 0.5 * sum(abs(counts_b[c] / total_b - counts_a[c] / total_a) for c in kept)


def gamma(scores_before, scores_after) -> float:
    """gamma = W1(P, Q), the Wasserstein-1 distance between two empirical 1-D score distributions (scipy).

    For equal sample sizes it is the mean absolute difference of the sorted scores.
    """
    return float(wasserstein_distance(list(map(float, scores_before)), list(map(float, scores_after))))


# --- sampling ----------------------------------------------------------------------------------------------------
def fixed_latents(generator: Generator, n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator.config.z_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sample(generator: Generator, z: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """[0, 1] images of `z` with const noise, on CPU."""
    device = next(generator.parameters()).device
    generator.eval()
    return torch.cat(
        [
            to_unit(generator(z[i : i + batch].to(device), noise_mode="const")).cpu()
            for i in range(0, len(z), batch)
        ]
    )


def judged_stats(images: torch.Tensor, judges: Judges, real_features: torch.Tensor | None) -> dict:
    """Share of every style / object as judged (and relative to uniform), missing classes, FD to real renders."""
    styles, objects = judges.predict(images)
    n, sc, oc = len(images), Counter(styles), Counter(objects)
    style_share = {s: sc[s] / n for s in STYLES}
    object_share = {o: oc[o] / n for o in OBJECTS}
    stats = {
        "n": n,
        "style_share": style_share,
        "object_share": object_share,
        "style_ratio_min": min(style_share.values()) * len(STYLES),
        "style_ratio_max": max(style_share.values()) * len(STYLES),
        "object_ratio_min": min(object_share.values()) * len(OBJECTS),
        "object_ratio_max": max(object_share.values()) * len(OBJECTS),
        "missing": [c for c, v in {**style_share, **object_share}.items() if v == 0],
    }
    if real_features is not None:
        stats["fd"] = frechet_distance(judges.features(images).cpu(), real_features)
    return stats


CONFIDENT = 0.9  # the object judge's top probability above which a sample counts as clearly one object


@torch.no_grad()
def object_clarity(images: torch.Tensor, judges: Judges, batch: int = 500) -> dict:
    """How unambiguous a generator's objects are, read by two independent judges.

    object_confident: share of images whose object-judge top softmax probability is at least CONFIDENT.
    object_judges_agree / style_judges_agree: share of images where the object (style) judge's top-1 equals the
    object (style) of judge-clip's best (style, object) pair among all world_prompt texts (as eval.judges.check
    scores judge-clip zero-shot). A sample that two classifiers trained apart read differently is ambiguous.
    """
    texts = [world_prompt(s, o) for s in STYLES for o in OBJECTS]
    text_emb = judges.clip_text(texts)
    confident = agree_object = agree_style = 0
    for x in images.split(batch):
        x = x.to(judges.device)
        p_object = judges.object(x).softmax(-1)
        judge_objects = p_object.argmax(-1)
        judge_styles = judges.style(x).argmax(-1)
        best_pair = (judges.clip_image(x) @ text_emb.T).argmax(-1)
        confident += int((p_object.max(-1).values >= CONFIDENT).sum())
        agree_object += int((best_pair % len(OBJECTS) == judge_objects).sum())
        agree_style += int((best_pair // len(OBJECTS) == judge_styles).sum())
    n = len(images)
    return {
        "object_confident": confident / n,
        "object_judges_agree": agree_object / n,
        "style_judges_agree": agree_style / n,
    }


@torch.no_grad()
def latent_class_agreement(
    generator: Generator, z: torch.Tensor, images: torch.Tensor, judges: Judges
) -> dict:
    """For a generator whose z picks a style and an object (GeneratorConfig.latent_classes): the share of `images`
    (drawn from `z`) whose top-1 style / object judge verdict is the style / object that z picked."""
    picked = generator.latent_classes(z.to(next(generator.parameters()).device)).cpu()
    styles, objects = judges.predict(images)
    n = len(images)
    return {
        "style_is_latent": sum(STYLES[int(i)] == s for i, s in zip(picked[:, 0], styles)) / n,
        "object_is_latent": sum(OBJECTS[int(i)] == o for i, o in zip(picked[:, 1], objects)) / n,
    }


def describe(stats: dict) -> str:
    """One line for `judged_stats`: class shares relative to uniform, FD, missing classes."""
    text = (
        f"styles x{stats['style_ratio_min']:.2f}-x{stats['style_ratio_max']:.2f} of uniform, "
        f"objects x{stats['object_ratio_min']:.2f}-x{stats['object_ratio_max']:.2f}"
    )
    if "fd" in stats:
        text += f", FD {stats['fd']:.1f}"
    if "object_confident" in stats:
        text += f", objects confident {stats['object_confident']:.0%}, judges agree {stats['object_judges_agree']:.0%}"
    if "object_is_latent" in stats:
        text += f", judged as z's pick: style {stats['style_is_latent']:.0%} object {stats['object_is_latent']:.0%}"
    return text + (f", missing: {', '.join(stats['missing'])}" if stats["missing"] else "")


def concept_text(judges: Judges, concept: str, kind: str) -> torch.Tensor:
    """Unit judge-clip text embedding of a concept: the normalised mean over the other attribute of world_prompt."""
    texts = (
        [world_prompt(concept, o) for o in OBJECTS]
        if kind == "style"
        else [world_prompt(s, concept) for s in STYLES]
    )
    return torch.nn.functional.normalize(judges.clip_text(texts).mean(0), dim=0)


def real_features(judges: Judges, erased: list[tuple[str, str]], batch: int = 520) -> torch.Tensor:
    """Judge features of held-out real renders (REAL_SEEDS per pair), pairs with an erased style or object left out."""
    styles = [s for s in STYLES if (s, "style") not in erased]
    objects = [o for o in OBJECTS if (o, "object") not in erased]
    images = to_tensor(render_pool(REAL_SEEDS, styles, objects)[0])
    return torch.cat([judges.features(x).cpu() for x in images.split(batch)])


def _judge(judges: Judges, images: torch.Tensor, batch: int = 500):
    styles, objects, features = [], [], []
    for x in images.split(batch):
        s, o = judges.predict(x)
        styles += s
        objects += o
        features.append(judges.features(x).cpu())
    return {"style": styles, "object": objects}, torch.cat(features)


def _shows(verdicts: dict[str, list[str]], erased: list[tuple[str, str]]) -> list[bool]:
    n = len(verdicts["style"])
    return [any(verdicts[kind][i] == c for c, kind in erased) for i in range(n)]


def evaluate_gan(
    before: Generator,
    after: Generator,
    concepts: list[str] | str,
    judges: Judges,
    n: int = 2000,
    seed: int = EVAL_SEED,
    seconds: float | None = None,
) -> tuple[dict, dict]:
    """(numbers, definitions) for unlearning `concepts` from `before` into `after` on `n` fixed latents."""
    start = time.perf_counter()
    erased = [canonical(c) for c in ([concepts] if isinstance(concepts, str) else concepts)]
    names = ", ".join(c for c, _ in erased)
    z = fixed_latents(before, n, seed)
    images = {"before": sample(before, z), "after": sample(after, z)}
    verdicts, features = {}, {}
    for side, x in images.items():
        verdicts[side], features[side] = _judge(judges, x)
    shows = {side: _shows(verdicts[side], erased) for side in images}
    real = real_features(judges, erased)

    numbers = {
        "concept_share_before": sum(shows["before"]) / n,
        "concept_share_after": sum(shows["after"]) / n,
    }
    kinds = sorted({kind for _, kind in erased})
    rest = [i for i, s in enumerate(shows["before"]) if not s]  # latents that did not show a concept before
    numbers["rest_tv"] = max(
        rest_tv(
            [verdicts["before"][k][i] for i in rest], [verdicts["after"][k][i] for i in rest], CLASSES[k], []
        )
        for k in kinds
    )
    numbers["rest_tv_all"] = max(
        rest_tv(verdicts["before"][k], verdicts["after"][k], CLASSES[k], [c for c, kk in erased if kk == k])
        for k in kinds
    )
    other = [k for k in CLASSES if k not in kinds]
    numbers["cross_tv"] = (
        rest_tv(verdicts["before"][other[0]], verdicts["after"][other[0]], CLASSES[other[0]], [])
        if other
        else None
    )
    for side in images:
        keep = [i for i, s in enumerate(shows[side]) if not s]
        numbers[f"fd_{side}"] = (
            frechet_distance(features[side][keep], real) if len(keep) > 1 else float("nan")
        )

    per_concept = {}
    try:
        clip_scores = {side: judges.clip_image(x) for side, x in images.items()}
        for c, kind in erased:
            text = concept_text(judges, c, kind)
            scores = {side: (100 * emb.cpu() @ text.cpu()).tolist() for side, emb in clip_scores.items()}
            per_concept[c] = {"gamma": gamma(scores["before"], scores["after"])}
        numbers["gamma"] = sum(v["gamma"] for v in per_concept.values()) / len(per_concept)
        gamma_note = ""
    except FileNotFoundError as err:
        numbers["gamma"] = None
        gamma_note = f" null here: {err}"
    for c, kind in erased:
        for side in images:
            share = sum(v == c for v in verdicts[side][kind]) / n
            per_concept.setdefault(c, {})[f"share_{side}"] = share
    numbers["seconds"] = seconds
    numbers["eval_seconds"] = time.perf_counter() - start
    numbers["n"] = n
    for side in images:
        for kind, classes in CLASSES.items():
            numbers[f"{kind}_share_{side}"] = histogram(verdicts[side][kind], classes)
    if len(erased) > 1:
        numbers["per_concept"] = per_concept

    judged = "judged by the style / object judges (assets/judges, top-1)"
    kind_text = " and ".join(f"{k}s" for k in kinds)
    definitions = {
        "latents": f"{n} fixed latents z ~ N(0, I) (torch seed {seed}), const noise, the same for both generators",
        "concept_share_before": f"share of the original generator's samples {judged} as an unlearnt concept ({names})",
        "concept_share_after": "the same share for the unlearnt generator",
        "rest_tv": (
            f"total-variation distance 1/2 sum_c |p(c) - q(c)| between the judged {kind_text} histograms, before (p) "
            f"and after (q), of the {len(rest)} latents whose original sample was not judged as {names} (so an "
            "unlearnt sample landing elsewhere does not count, a kept one that changes class does); the largest over "
            "the unlearnt concepts' kinds"
        ),
        "rest_tv_all": (
            "the same distance over all latents, each histogram renormalised over the classes that were not "
            "unlearnt: it also counts where the unlearnt samples went (e.g. onto plain)"
        ),
        "cross_tv": (
            "the same distance for the other kind's full histogram (objects when styles are unlearnt, and vice "
            "versa); null when both kinds are unlearnt"
        ),
        "fd_before": (
            "Frechet distance of judge features (style + object penultimate layers) between the original "
            f"generator's samples not judged as {names} and {len(REAL_SEEDS)} held-out real renders per (style, "
            "object) pair without an unlearnt style or object"
        ),
        "fd_after": "the same Frechet distance for the unlearnt generator's samples not judged as an unlearnt concept",
        "gamma": (
            "Wasserstein-1 distance (scipy.stats.wasserstein_distance) between the distributions of judge-clip "
            "scores 100 * cos(image, concept text) over the samples, before vs after; concept text = normalised mean "
            "judge-clip embedding of world_prompt over the other attribute; mean over the unlearnt concepts"
            + gamma_note
        ),
        "seconds": "wall-clock seconds of the unlearning itself (canvas-clip pool + training), evaluation excluded",
        "eval_seconds": "wall-clock seconds of this evaluation",
        "n": "number of fixed latents",
        "style_share_before": f"share of samples {judged} as each style (also _after, object_share_before/_after)",
    }
    if len(erased) > 1:
        definitions["per_concept"] = "each concept's own judged share before / after and gamma"
    return numbers, definitions


def comparison_grid(
    before: Generator, after: Generator, concepts, judges: Judges, seed: int = EVAL_SEED, rows: int = 8
):
    """Same latents in both columns: up to rows/2 samples judged as a concept before, then others; verdicts below."""
    erased = [canonical(c) for c in ([concepts] if isinstance(concepts, str) else concepts)]
    z = fixed_latents(before, 400, seed)
    x_before = sample(before, z)
    shows = _shows(dict(zip(("style", "object"), judges.predict(x_before))), erased)
    hits = [i for i, s in enumerate(shows) if s][: rows // 2]
    others = [i for i, s in enumerate(shows) if not s][: rows - len(hits)]
    pick = hits + others
    columns = {"original": x_before[pick], "unlearnt": sample(after, z[pick])}
    verdicts = {}
    for name, x in columns.items():
        styles, objects = judges.predict(x)
        verdicts[name] = [f"{s} / {o}" for s, o in zip(styles, objects)]
    labels = [f"z{i}" + (" (concept)" if shows[i] else "") for i in pick]
    return image_grid(columns, labels, verdicts)
