"""The attacks of eval.attacks on tiny models: their losses fall, only their own variables change, their ASR is
the judge table's, and the probe reads separable and non-separable features as it should."""

from __future__ import annotations

import pytest
import torch

from erasure.canvas.world import OBJECTS, STYLES
from eval.attacks import ATTACKS, inversion, noise, probe, relearn, soft, uda
from eval.attacks.base import (
    encode_texts,
    judge,
    success_rate,
    without_concept,
)
from pipelines.slots import SLOT, encode_with_slots, slot_ids
from tests.helpers import all_tensors

TINY = {"eval_seeds": 1, "num_inference_steps": 2}


class TableJudges:
    """A hand-made judge: the n-th image it is shown gets the n-th (style, object) of its table, cycling."""

    def __init__(self, table: list[tuple[str, str]]):
        self.table, self.seen = table, 0

    def predict(self, images):
        rows = [self.table[(self.seen + i) % len(self.table)] for i in range(len(images))]
        self.seen += len(images)
        return [s for s, _ in rows], [o for _, o in rows]


def flags(pipe) -> dict[str, bool]:
    return {
        f"{c}.{n}": p.requires_grad
        for c in ("unet", "text_encoder", "vae")
        for n, p in getattr(pipe, c).named_parameters()
    }


def test_a_slot_holding_a_words_own_embedding_encodes_as_that_word(tiny_pipeline):
    ids, mask = slot_ids(tiny_pipeline.tokenizer, [f"a cat in {SLOT} style"])
    monet = tiny_pipeline.tokenizer("monet", add_special_tokens=False).input_ids
    assert len(monet) == 1 and int(mask.sum()) == 1
    vector = tiny_pipeline.text_encoder.get_input_embeddings().weight[monet[0]].detach()
    with torch.no_grad():
        slotted = encode_with_slots(tiny_pipeline.text_encoder, ids, mask, vector[None])
    assert torch.allclose(slotted, encode_texts(tiny_pipeline, ["a cat in monet style"]), atol=1e-6)


def test_the_attackers_text_does_not_name_the_concept():
    assert without_concept("van gogh", "style", "van gogh", "cat") == "a cat in style"
    assert without_concept("tree", "object", "monet", "tree") == "a in monet style"


def test_asr_is_the_judge_tables_share():
    judges = TableJudges([("van gogh", "cat"), ("plain", "cat"), ("van gogh", "tree"), ("monet", "tree")])
    hits, verdicts = judge(judges, torch.zeros(4, 3, 8, 8), "van gogh", "style")
    assert hits == [True, False, True, False] and success_rate(hits) == 50.0
    assert verdicts[3] == "monet / tree"
    hits, _ = judge(judges, torch.zeros(4, 3, 8, 8), "tree", "object")
    assert success_rate(hits) == 50.0
    assert torch.isnan(torch.tensor(success_rate([])))


@pytest.mark.parametrize(
    "module, config",
    [
        (inversion, inversion.InversionConfig(images=8, steps=12, batch_size=4, lr=0.05, **TINY)),
        (uda, uda.UDAConfig(timesteps=3, iterations=4, lr=0.05, check_steps=1, **TINY)),
        (soft, soft.SoftConfig(timesteps=3, iterations=4, lr=0.05, check_steps=1, **TINY)),
    ],
)
def test_prompt_attacks_lower_their_loss_and_change_only_their_own_variables(
    tiny_pipeline, random_judges, module, config, monkeypatch
):
    # uda and soft keep the tokens of their best check: make each check better than the last, so the kept tokens
    # are the final ones and their loss is the optimisation's
    monkeypatch.setattr(uda, "clip_concept_probability", RisingChecks())
    with torch.no_grad():  # a random tiny UNet barely listens to its prompt; make the text matter
        for n, p in tiny_pipeline.unet.named_parameters():
            if "attn2.to_out" in n:
                p.mul_(20.0)
    before, before_flags = all_tensors(tiny_pipeline), flags(tiny_pipeline)
    before = {k: v.clone() for k, v in before.items()}
    result = module.run(
        tiny_pipeline, "van gogh", "style", config, seed=0, judges=random_judges, progress=False
    )
    assert result.details["loss_after"] < result.details["loss_before"]
    after = all_tensors(tiny_pipeline)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags(tiny_pipeline) == before_flags
    assert len(result.images) == len(result.verdicts) == len(result.prompts) == len(OBJECTS)
    assert 0 <= result.asr <= 100 and 0 <= result.control_asr <= 100
    assert result.embeddings is not None and result.definition.startswith("ASR:")


class RisingChecks:
    """A stand-in for the attacker's judge-clip check: every row of call n scores n / 100 (never a win)."""

    def __init__(self):
        self.calls = []

    def __call__(self, judges, images, concept, kind, pairs):
        self.calls.append(list(pairs))
        return torch.full((len(pairs),), len(self.calls) / 100)


def test_uda_schedule_walks_evenly_spaced_timesteps_lowest_first():
    assert uda.timestep_schedule(4, 1000) == [125, 375, 625, 875]
    assert uda.timestep_schedule(50, 1000)[:3] == [10, 30, 50]  # the paper's 50


class FixedClip:
    """judge-clip stand-in: every image embeds as e0; 'a cat in van gogh style' and 'a tree in monet style' as e0,
    every other text as e1; logit scale 2."""

    def __init__(self):
        self.clip = torch.nn.Module()
        self.clip.logit_scale = torch.nn.Parameter(torch.tensor(2.0).log())

    def clip_image(self, images):
        return torch.eye(2)[[0] * len(images)]

    def clip_text(self, texts):
        hits = ("a cat in van gogh style", "a tree in monet style")
        return torch.eye(2)[[0 if t in hits else 1 for t in texts]]


def test_the_attackers_check_is_judge_clips_zero_shot_probability_by_hand():
    from eval.attacks.base import clip_concept_probability

    images = torch.zeros(2, 3, 8, 8)
    # style: 13 candidate styles with the pair's object; the concept's text scores 2, the 12 others 0
    style = clip_concept_probability(FixedClip(), images, "van gogh", "style", [("van gogh", "cat")] * 2)
    expected = torch.e**2 / (torch.e**2 + 12)
    assert torch.allclose(style, torch.tensor([expected, expected]), atol=1e-6)  # 0.3811
    # object: 10 candidate objects with the pair's style; 'tree' scores 2, the 9 others 0
    obj = clip_concept_probability(FixedClip(), images[:1], "tree", "object", [("monet", "tree")])
    assert obj.item() == pytest.approx(torch.e**2 / (torch.e**2 + 9), abs=1e-6)  # 0.4509
    # another object's reading: its text is not a hit, so every candidate scores 0 but 'tree' (which scores 2)
    cat = clip_concept_probability(FixedClip(), images[:1], "cat", "object", [("monet", "tree")])
    assert cat.item() == pytest.approx(1 / (torch.e**2 + 9), abs=1e-6)


def test_prompt_attacks_keep_the_embeddings_of_their_best_check_and_stop_on_a_win(
    tiny_pipeline, random_judges, monkeypatch
):
    # soft, whose embeddings move every iteration (uda's projected tokens may not), through the loop uda shares
    class Checks(RisingChecks):
        # call 1: target 0 wins (a check at the stopping bar), the others score 0.3; call 2: 0.4 (better); call 3 on: 0.1 (worse)
        def __call__(self, judges, images, concept, kind, pairs):
            super().__call__(judges, images, concept, kind, pairs)
            n = len(self.calls)
            scores = torch.full((len(pairs),), {1: 0.3, 2: 0.4}.get(n, 0.1))
            if n == 1:
                scores[0] = uda.STOP_PROBABILITY
            return scores

    seen_hidden = []
    real_generate = uda.generate

    def recording_generate(pipe, hidden, seeds, config, *args, **kwargs):
        seen_hidden.append(hidden.clone())
        return real_generate(pipe, hidden, seeds, config, *args, **kwargs)

    checks = Checks()
    monkeypatch.setattr(uda, "clip_concept_probability", checks)
    monkeypatch.setattr(uda, "generate", recording_generate)
    config = soft.SoftConfig(timesteps=4, iterations=1, lr=0.05, check_steps=1, **TINY)
    result = soft.run(
        tiny_pipeline, "van gogh", "style", config, seed=0, judges=random_judges, progress=False
    )
    # target 0 won at the first check and was never optimised or checked again; the others ran every timestep
    assert len(checks.calls) == 4 and len(checks.calls[0]) == len(OBJECTS)
    assert all(len(c) == len(OBJECTS) - 1 and ("van gogh", OBJECTS[0]) not in c for c in checks.calls[1:])
    assert result.details["check_probability"] == [uda.STOP_PROBABILITY] + [0.4] * (len(OBJECTS) - 1)
    # the kept tokens are the ones each target's best check was drawn from: check 1 for target 0, check 2 else

    texts = [f"{SLOT} {SLOT} {SLOT} " + without_concept("van gogh", "style", "van gogh", o) for o in OBJECTS]
    ids, mask = slot_ids(tiny_pipeline.tokenizer, texts)
    with torch.no_grad():
        kept = encode_with_slots(tiny_pipeline.text_encoder, ids, mask, result.embeddings)
    assert torch.allclose(kept[0], seen_hidden[0][0], atol=1e-6)
    assert torch.allclose(kept[1:], seen_hidden[1], atol=1e-6)
    assert not torch.allclose(kept[1:], seen_hidden[3], atol=1e-6)  # not simply the last


def test_uda_prompts_are_vocabulary_tokens(tiny_pipeline, random_judges):
    config = uda.UDAConfig(timesteps=2, iterations=1, check_steps=1, **TINY)
    result = uda.run(tiny_pipeline, "van gogh", "style", config, seed=0, judges=random_judges, progress=False)
    vocab = tiny_pipeline.text_encoder.get_input_embeddings().weight.detach()
    for row in result.embeddings:
        assert all(bool((vocab == v).all(1).any()) for v in row)  # every embedding is some token's
    assert all(p.endswith("in style") and "<v" not in p for p in result.prompts)


def test_noise_reports_the_best_eta_and_eta_one_as_control(tiny_pipeline):
    # 10 objects x 1 seed per eta; the table makes eta #2 (of 3) the only one with hits: 3 of its 10.
    table = (
        [("plain", "cat")] * 10 + [("van gogh", "cat")] * 3 + [("plain", "cat")] * 7 + [("plain", "cat")] * 10
    )
    config = noise.NoiseConfig(etas=3, **TINY)
    result = noise.run(
        tiny_pipeline, "van gogh", "style", config, seed=0, judges=TableJudges(table), progress=False
    )
    assert result.asr == 30.0 and result.control_asr == 0.0
    assert result.details["best_eta"] == pytest.approx(1.425)
    assert list(result.details["asr_by_eta"].values()) == [0.0, 30.0, 0.0]


def test_relearn_fine_tunes_copies_and_finds_the_touched_parameters(
    tiny_pipeline, tiny_pipeline_dir, random_judges
):
    from tests.helpers import fresh

    base = fresh(tiny_pipeline_dir)
    name = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    with torch.no_grad():
        dict(tiny_pipeline.unet.named_parameters())[name].add_(0.01)
    assert relearn.touched_parameters(tiny_pipeline.unet, base.unet) == [name]
    before = {k: v.clone() for k, v in all_tensors(tiny_pipeline).items()}
    config = relearn.RelearnConfig(images=4, checkpoints=[0, 1, 2], batch_size=2, **TINY)
    result = relearn.run(
        tiny_pipeline, "van gogh", "style", config, 0, random_judges, progress=False, base=base
    )
    after = all_tensors(tiny_pipeline)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert set(result.details["asr_curves"]) == {"touched", "unet", "benign"}
    curves = result.details["asr_curves"]
    assert list(curves["touched"]) == list(curves["unet"]) == ["0", "1", "2"]
    assert list(curves["benign"]) == ["0", "2"]  # resurgence: measured after the whole benign schedule
    assert result.details["touched_parameters"] == 1
    assert result.control_asr == result.details["asr_curves"]["unet"]["0"]


def test_steps_to_50_is_the_first_measured_step_at_or_above_50():
    assert relearn.steps_to({0: 0.0, 10: 40.0, 25: 50.0, 50: 90.0}) == 25
    assert relearn.steps_to({0: 0.0, 10: 49.9}) is None
    assert relearn.steps_to({0: 80.0, 10: 20.0}) == 0


def test_the_probe_separates_what_is_separable_and_only_that():
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([1] * 100 + [0] * 100)
    separable = torch.randn(200, 8, generator=generator)
    separable[:, 3] += 4.0 * (labels * 2 - 1)  # one feature puts the classes 8 standard deviations apart
    train, test = torch.arange(0, 200, 2), torch.arange(1, 200, 2)
    predict = probe.fit_probe(separable[train], labels[train])
    assert probe.accuracy(predict(separable[test]), labels[test]) == 100.0
    noise_only = torch.randn(200, 8, generator=generator)  # features independent of the labels
    predict = probe.fit_probe(noise_only[train], labels[train])
    assert 35.0 <= probe.accuracy(predict(noise_only[test]), labels[test]) <= 65.0


def test_probe_of_a_model_against_itself_sees_no_change(tiny_pipeline, tiny_pipeline_dir, random_judges):
    from tests.helpers import fresh

    config = probe.ProbeConfig(images=8, probe_steps=50, **TINY)
    result = probe.run(
        tiny_pipeline,
        "van gogh",
        "style",
        config,
        0,
        random_judges,
        progress=False,
        base=fresh(tiny_pipeline_dir),
    )
    accuracy = result.details["probe_accuracy"]
    assert accuracy["base"] == accuracy["erased"]
    assert set(result.details["relative_weight_change"].values()) == {0.0}
    for similarity in result.details["activation_similarity"].values():
        assert similarity["concept"] == pytest.approx(1.0) and similarity["other"] == pytest.approx(1.0)


def test_every_attack_refuses_a_budget_of_zero():
    for name, attack in ATTACKS.items():
        field = {
            "inversion": "steps",
            "uda": "iterations",
            "soft": "iterations",
            "noise": "etas",
            "relearn": "images",
            "probe": "images",
        }[name]
        with pytest.raises(ValueError, match="at least 1"):
            attack.Config(**{field: 0}).check()


def test_object_concepts_use_every_style(tiny_pipeline, random_judges):
    config = inversion.InversionConfig(images=4, steps=1, batch_size=2, **TINY)
    result = inversion.run(
        tiny_pipeline, "tree", "object", config, seed=0, judges=random_judges, progress=False
    )
    assert len(result.prompts) == len(STYLES) and "a <v>" in result.prompts[0]
