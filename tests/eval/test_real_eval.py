"""Evaluation off the Canvas world: CLIP score and accuracy with a user's open_clip checkpoint, and NudeNet's nudity
rate; hand-computed cases, runs on tiny pipelines, and the command's refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from eval import clip_eval, nudity
from eval.judges.models import create_judge_clip


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    """judge-clip's shape with random weights, saved as a local checkpoint: `judge-clip:<path>`."""
    torch.manual_seed(0)
    model, _ = create_judge_clip()
    path = tmp_path_factory.mktemp("clip") / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def test_clip_spec_refusals(tmp_path, clip_checkpoint):
    assert clip_eval.check_clip_spec(f"judge-clip:{clip_checkpoint}") == ("judge-clip", str(clip_checkpoint))
    for spec, message in (
        ("judge-clip", "NAME:PATH"),
        (f"no-such-model:{clip_checkpoint}", "not an open_clip model name"),
        (f"judge-clip:{tmp_path / 'missing.safetensors'}", "does not exist"),
    ):
        with pytest.raises(ValueError, match=message):
            clip_eval.check_clip_spec(spec)


class FixedClip:
    """A stand-in whose features are given: images by their red value, texts by a table."""

    name = "fixed"

    def __init__(self, texts):
        self.texts = texts

    def image_features(self, images):
        return torch.stack(
            [torch.tensor([im.getpixel((0, 0))[0] / 255, 1 - im.getpixel((0, 0))[0] / 255]) for im in images]
        )

    def text_features(self, texts):
        return torch.stack([torch.tensor(self.texts[t]) for t in texts])


def test_clip_numbers_by_hand():
    rows = [
        {"group": "target", "prompt": "t", "verdict": "concept", "anchor_verdict": "anchor"},
        {"group": "unrelated", "prompt": "u", "verdict": None, "anchor_verdict": "anchor"},
    ]
    clip = FixedClip({"t": [1.0, 0.0], "u": [0.0, 1.0], "concept": [1.0, 0.0], "anchor": [0.0, 1.0]})
    red, blue = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 0))
    # images i for rows[i % 2]: red (target: reads as the concept), black (unrelated), black (target: anchor)...
    numbers = clip_eval.clip_numbers(rows, [red, blue, blue, blue], clip)
    assert numbers["clip_accuracy_target"] == 50.0  # red is nearer "concept", black nearer "anchor"
    assert numbers["clip_score_target"] == pytest.approx((100 * 1.0 + 100 * 0.0) / 2)
    assert numbers["clip_score_unrelated"] == pytest.approx(100.0)  # black = (0, 1) = "u"


def test_bank_groups_for_a_style_and_an_object():
    rows = clip_eval.bank_prompts("van gogh", "style", "painting")
    assert {r["group"] for r in rows} == set(clip_eval.GROUPS)
    assert all("van gogh" in r["prompt"] for r in rows if r["group"] in ("target", "paraphrase"))
    assert not any("van gogh" in r["prompt"] for r in rows if r["group"] in ("neighbour", "unrelated"))
    assert rows[0]["anchor_verdict"] == "a painting"
    objects = clip_eval.bank_prompts("cat", "object", "dog")
    assert objects[0]["anchor_verdict"] == "a photo of a dog" and "dog" not in {
        r["name"] for r in objects if r["group"] == "neighbour"
    }


def test_evaluate_clip_on_the_tiny_pipeline(tiny_pipeline, clip_checkpoint):
    clip = clip_eval.load_clip(f"judge-clip:{clip_checkpoint}")
    numbers, definitions, grid = clip_eval.evaluate_clip(
        tiny_pipeline, tiny_pipeline, "van gogh", "style", "painting", clip, seeds=(0,), steps=2
    )
    for group in clip_eval.GROUPS:
        assert numbers[f"clip_score_{group}"] == pytest.approx(
            numbers[f"base_clip_score_{group}"]
        )  # same model
        assert f"clip_score_{group}" in definitions
    assert 0 <= numbers["clip_accuracy_target"] <= 100 and grid.width > 0


class StubDetector:
    def __init__(self, detections):
        self.detections = iter(detections)

    def detect(self, image):
        assert image.ndim == 3 and image.shape[2] == 3
        return next(self.detections)


def test_nudity_rate_by_hand():
    images = [Image.new("RGB", (8, 8))] * 4
    detector = StubDetector(
        [
            [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.7}],
            [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.5}],  # below the 0.6 threshold
            [{"class": "FACE_FEMALE", "score": 0.9}],  # not an exposed class
            [{"class": "BUTTOCKS_EXPOSED", "score": 0.61}, {"class": "MALE_GENITALIA_EXPOSED", "score": 0.8}],
        ]
    )
    numbers = nudity.nudity_numbers(images, detector)
    assert numbers["nudity_rate"] == 50.0
    assert numbers["exposed_female_breast_exposed"] == 1 and numbers["exposed_buttocks_exposed"] == 1


def test_nudenet_itself_on_images_the_test_makes():
    """The real detector (its ONNX model ships in the wheel: no download) finds nothing in flat or noisy tiles."""
    pytest.importorskip("nudenet")
    detector = nudity.load_detector()
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(64, 64, 3, generator=g) * 255).byte().numpy()
    images = [Image.new("RGB", (64, 64), (200, 180, 160)), Image.fromarray(noise)]
    assert nudity.nudity_numbers(images, detector)["nudity_rate"] == 0.0


def test_the_command_off_the_canvas_world(tiny_pipeline_dir, tmp_path, clip_checkpoint, capsys, monkeypatch):
    """A model with another tokenizer is not a Canvas model: --clip evaluates it; bad --clip, nudity without
    NudeNet and an SD3/FLUX folder are refused with one sentence and exit 2."""
    from erasure import run as cli

    model = tmp_path / "real"
    shutil.copytree(tiny_pipeline_dir, model)
    spec = json.loads((model / "tokenizer" / "tokenizer.json").read_text())
    spec["model"]["vocab"]["zebra</w>"] = len(spec["model"]["vocab"])  # not the world's vocabulary any more
    (model / "tokenizer" / "tokenizer.json").write_text(json.dumps(spec))
    out = tmp_path / "run"
    argv = ["--concept", "van gogh", "--kind", "style", "--method", "uce", "--model", str(model)]
    assert (
        cli.main([*argv, "--out", str(out), "--clip", f"judge-clip:{clip_checkpoint}", "--eval-seeds", "1"])
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"clip_accuracy_target", "base_clip_accuracy_target", "clip_score_unrelated"} <= set(metrics)
    assert (out / "report.html").exists() and (out / "grid-van-gogh.png").exists()
    assert "clip_accuracy_target" in (out / "README.md").read_text()
    plain = tmp_path / "plain"  # without a CLIP: the grid and the report all the same, no CLIP numbers
    assert cli.main([*argv, "--out", str(plain), "--eval-seeds", "1"]) == 0
    assert (plain / "grid-van-gogh.png").exists() and (plain / "report.html").exists()
    assert "clip_score_target" not in json.loads((plain / "metrics.json").read_text())

    flux = tmp_path / "flux"
    shutil.copytree(tiny_pipeline_dir, flux)
    index = json.loads((flux / "model_index.json").read_text())
    (flux / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    monkeypatch.setitem(__import__("sys").modules, "nudenet", None)  # NudeNet not installed
    capsys.readouterr()
    for bad, message in (
        ([*argv, "--clip", f"judge-clip:{tmp_path / 'none.pt'}"], "does not exist"),
        (["--concept", "nudity", "--method", "uce", "--model", str(model)], "pip install nudenet"),
        (["--concept", "van gogh", "--kind", "style", "--model", str(flux)], "FluxPipeline"),
    ):
        assert cli.main([*bad, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("bad", "."))]
