"""What the evaluation produces: answer sets, grids, the HTML report and the judge check, with random-weight judges."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
import torch
from PIL import Image

from erasure.canvas.world import OBJECTS, STYLES
from erasure.train.judges import save_atomic
from eval.answer_set import AnswerSet, generate_answer_set, world_items
from eval.grid import image_grid
from eval.judges import check
from eval.report import write_report


def test_world_items():
    items = world_items()
    assert len(items) == len(STYLES) * len(OBJECTS)
    assert items[0] == ("a painting of a cat", "plain", "cat")
    assert ("a fish in van gogh style", "van gogh", "fish") in items
    aliases = world_items(styles=["plain", "van gogh"], objects=["cat"], use_aliases=True)
    assert aliases == [
        ("a cat in vincent van gogh style", "van gogh", "cat"),
        ("a cat in the painter of starry night style", "van gogh", "cat"),
    ]


def test_answer_set_depends_only_on_prompt_and_seed(tiny_pipeline, random_judges):
    items = world_items(styles=["van gogh", "plain"], objects=["cat"])
    kwargs = {"seeds": [3, 4], "judges": random_judges, "num_inference_steps": 2}
    whole = generate_answer_set(tiny_pipeline, items, batch_size=4, **kwargs)
    uneven = generate_answer_set(tiny_pipeline, items, batch_size=3, **kwargs)

    assert whole.prompts == ["a cat in van gogh style"] * 2 + ["a painting of a cat"] * 2
    assert whole.styles == ["van gogh", "van gogh", "plain", "plain"] and whole.seeds == [3, 4, 3, 4]
    assert whole.images.shape == (4, 3, 32, 32) and 0 <= whole.images.min() and whole.images.max() <= 1
    torch.testing.assert_close(whole.images, uneven.images, atol=1e-5, rtol=0)
    assert whole.pred_styles == uneven.pred_styles and whole.pred_objects == uneven.pred_objects
    assert not torch.allclose(whole.images[0], whole.images[1])  # another seed, another image
    assert set(whole.pred_styles) <= set(STYLES) and set(whole.pred_objects) <= set(OBJECTS)

    records = whole.records()
    assert [(r.style, r.object, r.pred_style) for r in records] == list(
        zip(whole.styles, whole.objects, whole.pred_styles)
    )
    by_mask = whole.subset([s == "plain" for s in whole.styles])
    by_index = whole.subset([2, 3])
    assert (
        isinstance(by_mask, AnswerSet) and by_mask.prompts == by_index.prompts == ["a painting of a cat"] * 2
    )
    torch.testing.assert_close(by_mask.images, whole.images[2:])


def solid(colour, n: int = 1) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1).expand(n, 3, 32, 32).clone()


def count(image: Image.Image, colour) -> int:
    return sum(n for n, c in image.getcolors(1 << 20) if c == colour)


def test_grid_places_every_tile_and_writes_labels():
    columns = {"original": torch.cat([solid([1, 0, 0]), solid([0, 1, 0])]), "esd": solid([0, 0, 1], 2)}
    plain = image_grid(columns, ["a cat in van gogh style", "a fish"], scale=3)
    judged = image_grid(
        columns, ["a cat in van gogh style", "a fish"], {"esd": ["van gogh\ncat", "plain\nfish"]}
    )

    # Nearest upscaling, no overlap: each 32x32 tile is exactly 96x96 pixels of its colour.
    assert count(plain, (255, 0, 0)) == count(plain, (0, 255, 0)) == 96 * 96
    assert count(plain, (0, 0, 255)) == 2 * 96 * 96
    assert plain.width > 2 * 96 and plain.height > 2 * 96
    assert judged.width >= plain.width and judged.height > plain.height  # room for the verdict lines

    # The row labels sit left of the first tile, the column names above it: both are drawn (dark pixels).
    pixels = plain.load()
    first_red = next(
        (x, y) for y in range(plain.height) for x in range(plain.width) if pixels[x, y] == (255, 0, 0)
    )
    left_strip = plain.crop((0, first_red[1], first_red[0], first_red[1] + 96))
    header = plain.crop((first_red[0], 0, plain.width, first_red[1]))
    assert left_strip.convert("L").getextrema()[0] < 128 and header.convert("L").getextrema()[0] < 128

    with pytest.raises(ValueError, match="column 'esd'"):
        image_grid({"esd": solid([0, 0, 1], 3)}, ["a", "b"])
    with pytest.raises(ValueError, match="verdicts 'ca'"):
        image_grid(columns, ["a", "b"], {"ca": ["x", "y"]})


def test_report_is_one_self_contained_html_file(tmp_path):
    grid = image_grid({"original": solid([1, 0, 0], 2)}, ["a", "b"])
    path = write_report(
        tmp_path / "report.html",
        "van gogh erasure",
        table=[{"method": "esd", "ua": 98.625, "ira": 81.0, "fd": 0.0012345}, {"method": "uce", "ua": 12.5}],
        definitions={"ua": "UA = 100 - style_acc[s*]", "fd": "Frechet distance of judge features"},
        images={"grid <original>": grid},
        bars={"UA (%)": {"esd": 98.625, "uce": 12.5, "ca": float("nan")}},
    )
    assert path == tmp_path / "report.html" and list(tmp_path.iterdir()) == [path]
    html = path.read_text(encoding="utf-8")
    for text in ("van gogh erasure", "98.62", "81.00", "0.00123", "12.50", "UA = 100 - style_acc[s*]", "n/a"):
        assert text in html
    assert "grid &lt;original&gt;" in html and "<svg" in html
    assert not re.search(r"https?://", html) and "<script" not in html
    embedded = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
    assert Image.open(io.BytesIO(base64.b64decode(embedded))).size == grid.size


def test_judge_check_reports_every_number(tmp_path, random_judges, capsys):
    save_atomic(random_judges.style.state_dict(), tmp_path / "style.safetensors")
    save_atomic(random_judges.object.state_dict(), tmp_path / "object.safetensors")
    save_atomic(random_judges.clip.state_dict(), tmp_path / "judge-clip.safetensors")
    assert check.main(["--json", "--seeds", "1", "--judges", str(tmp_path), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_images"] == len(STYLES) * len(OBJECTS) and result["seeds"] == 1
    for key in ("style_acc", "object_acc", "clip_style_acc", "clip_object_acc", "degraded_style_acc"):
        assert 0 <= result[key] <= 100 and key in result["definitions"]


def test_judge_check_without_weights_says_so(tmp_path, capsys):
    assert check.main(["--json", "--judges", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "not found" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
