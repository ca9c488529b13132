"""Comparison grids: one row per prompt, one column per model, the judges' verdict printed under every image."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw, ImageFont

PAD = 4
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def _to_pil(image: torch.Tensor, scale: int) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB image, nearest-upscaled so single pixels of a 32 px image stay visible."""
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    tile = Image.fromarray(array)
    return tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST)


def image_grid(
    columns: dict[str, torch.Tensor],
    row_labels: list[str],
    verdicts: dict[str, list[str]] | None = None,
    scale: int = 3,
) -> Image.Image:
    """A grid image: a header row with the column names, then per row its label and one tile per column.

    `columns[name]` is (R, 3, H, W) in [0, 1] with R = len(row_labels); `verdicts[name][r]` (any columns, may hold
    newlines) is printed under tile r of that column.
    """
    if not columns:
        raise ValueError("a grid needs at least one column.")
    verdicts = verdicts or {}
    for name, images in columns.items():
        if images.ndim != 4 or len(images) != len(row_labels):
            raise ValueError(
                f"column {name!r} has shape {tuple(images.shape)}; need ({len(row_labels)}, 3, H, W)."
            )
    for name, texts in verdicts.items():
        if name not in columns or len(texts) != len(row_labels):
            raise ValueError(f"verdicts {name!r} must name a column and hold one text per row.")

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.multiline_textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    tile_w = max(images.shape[-1] for images in columns.values()) * scale
    tile_h = max(images.shape[-2] for images in columns.values()) * scale
    texts = [t for column in verdicts.values() for t in column]
    cell_w = max([tile_w, *(size(t)[0] for t in [*texts, *columns])]) + 2 * PAD
    verdict_h = max([0, *(size(t)[1] + PAD for t in texts)])
    cell_h = tile_h + verdict_h + 2 * PAD
    label_w = max([0, *(size(t)[0] for t in row_labels)]) + 2 * PAD
    header_h = max(size(t)[1] for t in columns) + 2 * PAD

    grid = Image.new(
        "RGB", (label_w + cell_w * len(columns), header_h + cell_h * len(row_labels)), BACKGROUND
    )
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(columns):
        x = label_w + c * cell_w
        draw.text((x + (cell_w - size(name)[0]) // 2, PAD), name, fill=INK, font=font)
    for r, label in enumerate(row_labels):
        y = header_h + r * cell_h
        draw.text((PAD, y + PAD + (tile_h - size(label)[1]) // 2), label, fill=INK, font=font)
        for c, (name, images) in enumerate(columns.items()):
            x = label_w + c * cell_w
            tile = _to_pil(images[r], scale)
            grid.paste(tile, (x + (cell_w - tile.width) // 2, y + PAD + (tile_h - tile.height) // 2))
            if name in verdicts:
                text = verdicts[name][r]
                draw.multiline_text(
                    (x + (cell_w - size(text)[0]) // 2, y + PAD + tile_h + PAD),
                    text,
                    fill=INK,
                    font=font,
                    align="center",
                )
    return grid


def main(argv=None) -> int:
    """`python -m eval.grid --model A --model B ... (--concept C | --prompts FILE) [--seeds 0,1] --out grid.png`.

    Rows are the concept's grid prompts (`eval.evaluate.grid_rows`) or the file's lines, once per seed; columns are
    the models, each generating from the same seeds (DDIM 20, guidance 5). Under each image of a Canvas-world model
    the judges' verdict (style / object) is printed. Bad input prints one sentence and exits with code 2.
    """
    import argparse
    import sys
    from pathlib import Path

    from erasure.canvas.world import UnknownConceptError, canonical
    from eval.answer_set import generate_answer_set
    from eval.evaluate import EvalSettings, grid_rows
    from eval.judges.models import load_judges
    from eval.report import save_png
    from pipelines.loading import PipelineLoadError, is_canvas, load_pipeline

    parser = argparse.ArgumentParser(prog="python -m eval.grid", description="Draw an evaluation grid.")
    parser.add_argument(
        "--model", action="append", default=[], help="a model name, folder or hub id (repeat)"
    )
    parser.add_argument("--concept", help="a world concept: its grid prompts are the rows")
    parser.add_argument("--prompts", type=Path, help="a text file, one prompt per line, instead of --concept")
    parser.add_argument("--seeds", default="0", help="comma-separated image seeds, the same for every model")
    parser.add_argument("--out", type=Path, help="the PNG to write")
    args = parser.parse_args(argv)
    try:
        if not args.model or not args.out or (args.concept is None) == (args.prompts is None):
            raise ValueError("give at least one --model, an --out PNG, and either --concept or --prompts.")
        if len(set(args.model)) != len(args.model):
            raise ValueError("name each --model once.")
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, not {args.seeds!r}.") from None
        if args.concept is not None:
            rows = grid_rows(*canonical(args.concept))
        else:
            if not args.prompts.is_file():
                raise ValueError(f"prompts file {args.prompts} does not exist.")
            rows = [(p.strip(), "", "") for p in args.prompts.read_text().splitlines() if p.strip()]
            if not rows:
                raise ValueError(f"prompts file {args.prompts} holds no prompt.")
        models = {name: load_pipeline(name) for name in args.model}
        judges = load_judges()
    except (ValueError, UnknownConceptError, PipelineLoadError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = EvalSettings()
    labels = [
        f"{prompt} (seed {seed})" if len(seeds) > 1 else prompt for seed in seeds for prompt, *_ in rows
    ]
    columns, verdicts = {}, {}
    for name, pipe in models.items():
        tiles, said = [], []
        for seed in seeds:
            answers = generate_answer_set(
                pipe,
                rows,
                [seed],
                judges,
                settings.batch_size,
                settings.num_inference_steps,
                settings.guidance_scale,
                desc=f"grid ({name}, seed {seed})",
            )
            tiles.append(answers.images)
            said += [f"{s} / {o}" for s, o in zip(answers.pred_styles, answers.pred_objects)]
        columns[name] = torch.cat(tiles)
        if is_canvas(pipe):
            verdicts[name] = said
    save_png(image_grid(columns, labels, verdicts), args.out)
    print(f"grid of {len(labels)} rows x {len(columns)} models written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
