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
