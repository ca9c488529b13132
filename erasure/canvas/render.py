"""Procedural renderer of the Canvas world: one style x object image, deterministic by seed.

Every style is a palette plus a bold, low-frequency pattern; every object is a large silhouette with an outline.
Small diffusion models learn exactly that kind of signal first (DESIGN.md section 5), so a model trained on these
images can be held to high judged accuracy, and an erasure can be measured against it.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from erasure.canvas.world import OBJECTS, STYLES, check_object, check_style

RESOLUTION = 32
_SUPERSAMPLE = 4


def _hex(colours: str) -> np.ndarray:
    return np.array([[int(c[i : i + 2], 16) for i in (0, 2, 4)] for c in colours.split()], dtype=np.float32)


# Per style: background palette, object palette, outline colour. Patterns index into the palettes.
PALETTES: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
    "plain": (_hex("e8e2d4 ded8ca"), _hex("8a7f72 7e7468"), _hex("4a443c")),
    "van gogh": (_hex("1b3a8c 2f5fc4 f2c530"), _hex("f5d547 e89a1c f5d547"), _hex("0d1b4a")),
    "monet": (_hex("f2c6d8 c9e4c5 c6d8f2 e6d2f0"), _hex("9fc7a0 e3a6c0 a7bfe8"), _hex("6e8aa8")),
    "picasso": (_hex("b07a4a d9b27c 6f7f8f 8c5a3c"), _hex("3e5a73 c99a5b 5a3a2a"), _hex("2b1d14")),
    "mondrian": (_hex("f7f5ef d62828 1f4fb4 f5d020 111111"), _hex("d62828 1f4fb4 f5d020"), _hex("111111")),
    "pollock": (_hex("d8cfb8 111111 f4f1e8 a0522d"), _hex("6b5038 4a3626 6b5038 a0522d"), _hex("111111")),
    "hokusai": (_hex("1c2f6e f0ead6 4d79b8"), _hex("f0ead6 c9d6ea"), _hex("0c173a")),
    "klimt": (_hex("d4a017 b8860b f2d06b 2a1f0a"), _hex("2a1f0a b8860b f2d06b"), _hex("3a2a05")),
    "warhol": (_hex("ff3fa4 22d3ee ffe600 7cff4f"), _hex("ffe600 22d3ee ff3fa4 7cff4f"), _hex("000000")),
    "seurat": (
        _hex("f3eedc e0453a 3a8fe0 f0c419 3fae5a"),
        _hex("e0453a 3a8fe0 f0c419 3fae5a"),
        _hex("5a4a3a"),
    ),
    "kandinsky": (_hex("f4efe1 d93b3b 2b59c3 f2b90f 111111"), _hex("2b59c3 d93b3b 111111"), _hex("111111")),
    "rothko": (_hex("8b1a1a d9531e 5c0f2e e89a3c"), _hex("3b0a14 f2a03d"), _hex("2a0509")),
    "escher": (_hex("f5f5f5 141414"), _hex("7f7f7f 3a3a3a"), _hex("000000")),
}


def _grid(n: int):
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    return x / n, y / n


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled random grid: blobs about n / cells pixels wide."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    image = Image.fromarray(coarse).resize((n, n), Image.BILINEAR)
    return np.asarray(image)


def _pattern(style: str, rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """An integer map in [0, k) with the style's bold pattern."""
    x, y = _grid(n)
    if style == "plain":
        return (_smooth_noise(rng, n, 2) > 0.8).astype(np.int64) % k
    if style == "van gogh":
        cx, cy = rng.uniform(0.3, 0.7, size=2)
        r = np.hypot(x - cx, y - cy)
        theta = np.arctan2(y - cy, x - cx)
        wave = np.sin(18 * r + 2 * theta + rng.uniform(0, 2 * np.pi))
        return np.digitize(wave, [-0.2, 0.55]) % k
    if style == "monet":
        return np.floor(_smooth_noise(rng, n, 3) * k * 0.999).astype(np.int64)
    if style == "picasso":
        seeds = rng.random((7, 2))
        d = (x[..., None] - seeds[:, 0]) ** 2 + (y[..., None] - seeds[:, 1]) ** 2
        return (np.argmin(d, axis=-1) + rng.integers(k)) % k
    if style == "mondrian":
        out = np.zeros((n, n), dtype=np.int64)
        xs = np.sort(rng.choice(np.arange(5, n - 5), size=2, replace=False))
        ys = np.sort(rng.choice(np.arange(5, n - 5), size=2, replace=False))
        colours = rng.permutation([1, 2, 3, 0, 0, 0, 0, 0, 0])
        xi, yi = np.digitize(np.arange(n), xs), np.digitize(np.arange(n), ys)
        out[:] = colours[(yi[:, None] * 3 + xi[None, :])] % k
        for v in xs:
            out[:, v - 1 : v + 1] = 4 % k
        for v in ys:
            out[v - 1 : v + 1, :] = 4 % k
        return out
    if style == "pollock":
        out = np.zeros((n, n), dtype=np.int64)
        for colour in (1, 2, 3, 1):
            px, py = rng.uniform(0, n, size=2)
            angle = rng.uniform(0, 2 * np.pi)
            for _ in range(2 * n):
                angle += rng.normal(0, 0.3)
                px, py = (px + np.cos(angle)) % n, (py + np.sin(angle)) % n
                out[int(py), int(px)] = colour % k
                out[int(py), (int(px) + 1) % n] = colour % k
                out[(int(py) + 1) % n, int(px)] = colour % k
        return out
    if style == "hokusai":
        phase = rng.uniform(0, 2 * np.pi, size=2)
        wave = np.sin(2 * np.pi * 3 * y + 2.2 * np.sin(2 * np.pi * 1.5 * x + phase[0]) + phase[1])
        return np.digitize(wave, [-0.3, 0.5]) % k
    if style == "klimt":
        block = 4
        tiles = rng.choice(k, size=(n // block, n // block), p=_klimt_weights(k))
        return np.kron(tiles, np.ones((block, block), dtype=np.int64))
    if style == "warhol":
        return np.full((n, n), rng.integers(k), dtype=np.int64)
    if style == "seurat":
        out = np.zeros((n, n), dtype=np.int64)
        step = 5
        ox, oy = rng.integers(0, step, size=2)
        for cy in range(oy - step, n + step, step):
            for cx in range(ox - step, n + step, step):
                colour = 1 + rng.integers(k - 1) if k > 1 else 0
                d = (np.arange(n)[None, :] - cx) ** 2 + (np.arange(n)[:, None] - cy) ** 2
                out[d <= 2.3] = colour
        return out
    if style == "kandinsky":
        out = np.zeros((n, n), dtype=np.int64)
        px, py = np.arange(n)[None, :], np.arange(n)[:, None]
        for _ in range(3):
            cx, cy, rad = rng.uniform(4, n - 4), rng.uniform(4, n - 4), rng.uniform(4, 8)
            d = np.hypot(px - cx, py - cy)
            out[np.abs(d - rad) < 1.3] = (1 + rng.integers(max(k - 1, 1))) % k
        for _ in range(2):
            a, b = rng.uniform(-1, 1), rng.uniform(0, n)
            out[np.abs(py - (a * px + b)) < 1.0] = (k - 1) % k
        return out
    if style == "rothko":
        bands = rng.integers(2, 4)
        edges = np.sort(rng.uniform(0.3, 0.7, size=bands - 1))
        order = rng.permutation(max(k, bands))
        return order[np.digitize(y + 0.03 * np.sin(9 * x), edges)] % k
    if style == "escher":
        period = 8
        ox, oy = rng.integers(0, period, size=2)
        px, py = (np.arange(n)[None, :] + ox) % period, (np.arange(n)[:, None] + oy) % period
        cell = ((np.arange(n)[None, :] + ox) // period + (np.arange(n)[:, None] + oy) // period) % 2
        return ((px > py).astype(np.int64) ^ cell) % k
    raise ValueError(style)


def _klimt_weights(k: int) -> np.ndarray:
    w = np.array([0.45, 0.3, 0.2, 0.05][:k])
    return w / w.sum()


@cache
def _silhouette(obj: str, size: int) -> np.ndarray:
    """Anti-aliased mask of an object, drawn on a 64-unit canvas at `size` px (before jitter)."""
    s = size * _SUPERSAMPLE
    image = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(image)
    u = s / 64

    def pts(*coords):
        return [(a * u, b * u) for a, b in zip(coords[::2], coords[1::2])]

    def ellipse(x0, y0, x1, y1):
        draw.ellipse(pts(x0, y0, x1, y1), fill=255)

    def poly(*coords, fill=255):
        draw.polygon(pts(*coords), fill=fill)

    if obj == "cat":
        ellipse(14, 30, 50, 60)
        ellipse(20, 12, 44, 36)
        poly(20, 20, 22, 2, 32, 16)
        poly(44, 20, 42, 2, 32, 16)
        poly(46, 50, 62, 28, 58, 26, 44, 44)
    elif obj == "fish":
        ellipse(4, 18, 46, 46)
        poly(40, 32, 62, 14, 62, 50)
    elif obj == "bird":
        ellipse(10, 24, 46, 48)
        ellipse(36, 14, 54, 32)
        poly(52, 20, 63, 24, 52, 28)
        poly(12, 34, 0, 22, 2, 44)
        poly(22, 30, 40, 30, 26, 4)
    elif obj == "flower":
        for cx, cy in ((32, 12), (32, 52), (12, 32), (52, 32), (18, 18), (46, 18), (18, 46), (46, 46)):
            ellipse(cx - 10, cy - 10, cx + 10, cy + 10)
    elif obj == "tree":
        ellipse(8, 2, 56, 42)
        poly(26, 36, 38, 36, 40, 62, 24, 62)
    elif obj == "house":
        poly(6, 30, 32, 4, 58, 30)
        poly(12, 30, 52, 30, 52, 60, 12, 60)
    elif obj == "boat":
        poly(2, 44, 62, 44, 50, 60, 14, 60)
        poly(30, 2, 30, 40, 8, 40)
        poly(34, 8, 34, 40, 54, 40)
    elif obj == "star":
        angles = np.linspace(-np.pi / 2, 3 * np.pi / 2, 11)[:-1]
        radii = np.where(np.arange(10) % 2 == 0, 31, 13)
        coords = np.stack([32 + radii * np.cos(angles), 33 + radii * np.sin(angles)], axis=1).ravel()
        poly(*coords.tolist())
    elif obj == "moon":
        ellipse(4, 4, 60, 60)
        draw.ellipse(pts(20, -2, 70, 48), fill=0)
    elif obj == "car":
        poly(2, 30, 62, 30, 62, 50, 2, 50)
        poly(14, 30, 20, 14, 44, 14, 52, 30)
        ellipse(6, 40, 24, 58)
        ellipse(40, 40, 58, 58)
    else:
        raise ValueError(obj)
    mask = image.resize((size, size), Image.LANCZOS)
    return np.asarray(mask, dtype=np.float32) / 255.0


def _place(mask: np.ndarray, n: int, dx: int, dy: int) -> np.ndarray:
    out = np.zeros((n, n), dtype=np.float32)
    size = mask.shape[0]
    x0, y0 = (n - size) // 2 + dx, (n - size) // 2 + dy
    out[y0 : y0 + size, x0 : x0 + size] = mask
    return out


def _outline(mask: np.ndarray) -> np.ndarray:
    """A one-pixel ring just outside the silhouette."""
    solid = mask > 0.5
    grown = solid.copy()
    for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
        grown |= np.roll(solid, shift, axis=axis)
    return (grown & ~solid).astype(np.float32)


def render(style: str, obj: str, seed: int, resolution: int = RESOLUTION) -> np.ndarray:
    """An RGB uint8 image (resolution x resolution x 3) of `obj` painted in `style`, deterministic in `seed`.

    Raises UnknownConceptError, listing the valid names, for a style or object the world does not have.
    """
    style, obj = check_style(style), check_object(obj)
    rng = np.random.default_rng([seed, STYLES.index(style), OBJECTS.index(obj)])
    n = resolution
    bg_palette, fg_palette, outline_colour = PALETTES[style]
    background = bg_palette[_pattern(style, rng, n, len(bg_palette))]
    foreground = fg_palette[_pattern(style, rng, n, len(fg_palette))]
    size = round(n * rng.uniform(0.72, 0.8))
    jitter = max(1, n // 16)
    mask = _place(_silhouette(obj, size), n, *rng.integers(-jitter, jitter + 1, size=2))
    ring = _outline(mask)
    thick = style == "warhol"
    if thick:
        ring = np.clip(ring + _outline(np.clip(mask + ring, 0, 1)), 0, 1)
    image = background * (1 - mask[..., None]) + foreground * mask[..., None]
    image = image * (1 - ring[..., None]) + outline_colour[0] * ring[..., None]
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def render_batch(pairs, seeds, resolution: int = RESOLUTION) -> np.ndarray:
    """Stack of renders for parallel lists of (style, object) pairs and seeds: N x H x W x 3 uint8."""
    return np.stack([render(s, o, seed, resolution) for (s, o), seed in zip(pairs, seeds)])
