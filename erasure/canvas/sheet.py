"""Draw the contact sheet: every style (rows) x every object (columns) of the Canvas world.

python -m erasure.canvas.sheet --out sheet.png [--seed 0] [--scale 3]
"""

from __future__ import annotations

import argparse

from PIL import Image, ImageDraw

from erasure.canvas.render import RESOLUTION, render
from erasure.canvas.world import OBJECTS, STYLES


def contact_sheet(seed: int = 0, scale: int = 3) -> Image.Image:
    """A labelled PIL image with one render per (style, object), all with the same seed."""
    cell = RESOLUTION * scale
    label_w, label_h = 80, 14
    sheet = Image.new("RGB", (label_w + cell * len(OBJECTS), label_h + cell * len(STYLES)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, obj in enumerate(OBJECTS):
        draw.text((label_w + j * cell + 2, 1), obj, fill="black")
    for i, style in enumerate(STYLES):
        draw.text((2, label_h + i * cell + cell // 2 - 5), style, fill="black")
        for j, obj in enumerate(OBJECTS):
            tile = Image.fromarray(render(style, obj, seed)).resize((cell, cell), Image.NEAREST)
            sheet.paste(tile, (label_w + j * cell, label_h + i * cell))
    return sheet


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="sheet.png", help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=3, help="nearest-neighbour upscaling of each tile")
    args = parser.parse_args(argv)
    contact_sheet(args.seed, args.scale).save(args.out)
    print(
        f"wrote {args.out}: {len(STYLES)} styles x {len(OBJECTS)} objects at {RESOLUTION}px, seed {args.seed}"
    )


if __name__ == "__main__":
    main()
