"""A small labelled image dataset made on the spot, in the fast.ai layout, with no download.

Each image is one shape (the class) drawn at a random position, scale, rotation and colour over a
random background (a colour gradient, noise and a few distracting strokes). Images have varied
sizes and aspect ratios and are saved as JPEG or PNG, so the pipeline's resize and decode paths
are exercised. With a few dozen images per class the task is learnable in minutes on a CPU but
not trivially: a model has to be invariant to pose and colour, which is what augmentation teaches.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(math.cos(angle + math.pi / 4 + k * math.pi / 2), math.sin(angle + math.pi / 4 + k * math.pi / 2))
               for k in range(4)]
    elif kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif kind == "star":
        pts = []
        for k in range(10):
            rr = 1.0 if k % 2 == 0 else 0.45
            a = angle + k * math.pi / 5
            pts.append((rr * math.cos(a), rr * math.sin(a)))
    elif kind == "cross":
        w = 0.33
        base = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
                (-w, -w)]
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [(x * ca - y * sa, x * sa + y * ca) for x, y in base]
    else:
        raise ValueError(kind)
    return [(cx + r * x, cy + r * y) for x, y in pts]


# Per-class colours of the `easy` variant: the class shows in the colour as well as the shape.
EASY_COLOURS = {"circle": (220, 40, 40), "square": (40, 180, 40), "triangle": (40, 60, 220),
                "star": (230, 200, 30), "cross": (200, 40, 200), "ring": (30, 200, 200)}


def draw_shape(kind: str, rng: np.random.Generator, width: int = 80, height: int = 64,
               clutter: bool = True, easy: bool = False) -> Image.Image:
    """One image of a shape class; `clutter` adds gradient backgrounds and distracting strokes."""
    # Background: a random two-colour gradient with pixel noise.
    # Muted backgrounds (channels within +-50 of a random grey) keep the shape the main signal.
    grey = rng.integers(60, 196)
    c0, c1 = grey + rng.integers(-50, 51, 3), grey + rng.integers(-50, 51, 3)
    if not clutter:
        c1 = c0
    t = np.linspace(0, 1, width)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, height)[:, None, None]
    bg = c0 * (1 - t) + c1 * t
    bg = np.broadcast_to(bg, (height, width, 3)) + rng.normal(0, 12, (height, width, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    # Distractors: a few thin strokes in random colours.
    for _ in range(int(rng.integers(0, 3)) if clutter else 0):
        xy = [tuple(rng.uniform(0, [width, height])) for _ in range(2)]
        draw.line(xy, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 3)))
    # The shape: a colour far enough from the background mean to be visible.
    mean = np.asarray(bg).reshape(-1, 3).mean(0)
    while True:
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - mean).sum() > 240:
            break
    fill = EASY_COLOURS[kind] if easy else tuple(int(v) for v in colour)
    side = min(width, height)
    r = rng.uniform(0.22, 0.42) * side
    cx = rng.uniform(r, width - r)
    cy = rng.uniform(r, height - r)
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r * 0.3)))
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=fill)
    return img


def make_shapes_dataset(
    root: str,
    classes: tuple[str, ...] | list[str] = SHAPES[:4],
    n_train: int = 60,
    n_valid: int = 30,
    n_test: int = 0,
    seed: int = 0,
    min_side: int = 56,
    max_side: int = 96,
    clutter: bool = True,
    easy: bool = False,
) -> str:
    """Write root/train/<class>/, root/valid/<class>/ (and root/test/ if n_test); returns root.

    `n_train` and `n_valid` are images per class. Deterministic for a given seed. Without
    `clutter` (flat backgrounds, no strokes) the task is easy enough to learn from scratch in
    seconds; `easy` also gives each class its own colour (the shape still varies in pose), so a
    model learns it from scratch in a few hundred steps on a CPU: the demo and the integration
    tests, which have no pretrained weights and minutes to train, use that.
    """
    unknown = [c for c in classes if c not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shape classes {unknown}; choose from {SHAPES}")
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("valid", n_valid)):
        for c in classes:
            folder = os.path.join(root, split, c)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
                img = draw_shape(c, rng, w, h, clutter, easy)
                if i % 3 == 2:
                    img.save(os.path.join(folder, f"{c}_{i:04d}.png"))
                else:
                    img.save(os.path.join(folder, f"{c}_{i:04d}.jpg"), quality=90)
    if n_test:
        folder = os.path.join(root, "test")
        os.makedirs(folder, exist_ok=True)
        for i in range(n_test):
            c = classes[int(rng.integers(0, len(classes)))]
            w, h = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
            draw_shape(c, rng, w, h, clutter, easy).save(os.path.join(folder, f"img_{i:04d}.jpg"), quality=90)
    return root
