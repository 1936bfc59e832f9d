"""Shapes micro-world: seeded 32x32 scenes of coloured shapes with captions that say what is there.

Every image is drawn at 4x resolution with PIL and box-filtered down, so edges are anti-aliased like a photo.
Attributes: shape, colour, size, position, count (1-3 of the same shape), rotation and texture (solid/striped).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "arrow")
COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "yellow": (235, 215, 50),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (235, 235, 235), "cyan": (40, 210, 220),
}
SIZES = ("small", "large")
TEXTURES = ("solid", "striped")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
POSITIONS = ("left", "right", "top", "bottom", "center")
IMAGE_SIZE = 32
PLAIN_SHARE = 0.75  # share of captions that name only the shape (and count)
_SS = 4  # supersampling factor


@dataclass(frozen=True)
class ShapeScene:
    """The attributes of one scene; `caption` is one of several templated sentences that say them."""
    shape: str
    color: str
    size: str
    count: int
    texture: str
    rotation: float  # degrees, counter-clockwise; arrows point right at 0
    position: str | None  # only for single shapes
    caption: str


def _outline(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of `shape` (None for shapes drawn as ellipses)."""
    t = np.deg2rad(rot)
    if shape in ("circle", "ring"):
        return None
    if shape == "square":
        ang = np.deg2rad(45 + np.arange(4) * 90) + t
        pts = np.stack([np.cos(ang), np.sin(ang)], 1) * r
    elif shape == "triangle":
        ang = np.deg2rad(-90 + np.arange(3) * 120) + t
        pts = np.stack([np.cos(ang), np.sin(ang)], 1) * r
    elif shape == "star":
        ang = np.deg2rad(-90 + np.arange(10) * 36) + t
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1)
    elif shape == "cross":
        a, b = r, r * 0.36
        base = np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
                         (-a, -b), (-b, -b)])
        pts = base @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    elif shape == "heart":
        s = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x = 16 * np.sin(s) ** 3
        y = -(13 * np.cos(s) - 5 * np.cos(2 * s) - 2 * np.cos(3 * s) - np.cos(4 * s))
        base = np.stack([x, y + 2], 1) / 17 * r
        pts = base @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    elif shape == "arrow":
        base = np.array([(-1, -0.25), (0.2, -0.25), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.25), (-1, 0.25)]) * r
        # image y grows downwards: rotate counter-clockwise on screen
        pts = base @ np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return [(cx + x, cy + y) for x, y in pts]


def _position_word(cx: float, cy: float, size: int) -> str:
    dx, dy = cx / size - 0.5, cy / size - 0.5
    if max(abs(dx), abs(dy)) < 0.12:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _caption(rng: np.random.Generator, s: dict) -> str:
    """One caption for the scene. Most (PLAIN_SHARE) name only the shape and count, the rest add colour, size,
    texture and position. The shape word is always there; in trials, mostly plain captions taught the tiny CLIP
    shapes several times faster than always-rich ones, which it first learns to match by colour alone."""
    shape, color, size, count, texture, pos = s["shape"], s["color"], s["size"], s["count"], s["texture"], s["position"]
    tex = "striped " if texture == "striped" else ""
    if count == 1:
        plain = [f"a photo of a {shape}.", f"a {shape}.", f"a picture of a {shape}."]
        rich = [
            f"a {color} {shape}.",
            f"a photo of a {size} {tex}{color} {shape}.",
            f"a {tex}{color} {shape} on the {pos}.",
            f"a {size} {shape} on the {pos}.",
        ]
    else:
        cw, shapes_ = COUNT_WORDS[count], plural(shape)
        plain = [f"a photo of {cw} {shapes_}.", f"{cw} {shapes_}."]
        rich = [f"{cw} {color} {shapes_}.", f"a photo of {cw} {size} {tex}{color} {shapes_}.", f"{cw} {size} {shapes_}."]
    options = plain if rng.random() < PLAIN_SHARE else rich
    return options[int(rng.integers(len(options)))]


def render_scene(rng: np.random.Generator, *, shape: str | None = None, count: int | None = None) -> tuple[np.ndarray, ShapeScene]:
    """Draw one scene with random attributes (or the given shape/count); returns (uint8 HxWx3, attributes)."""
    S = IMAGE_SIZE * _SS
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    count = count or int(rng.choice([1, 1, 1, 2, 3]))
    size = SIZES[int(rng.integers(2))] if count == 1 else "small"
    texture = TEXTURES[int(rng.random() < 0.3)] if size == "large" else "solid"
    # arrows point in one of 8 directions; other shapes are tilted a little, so their names stay unambiguous
    if shape == "arrow":
        rotation = float(rng.integers(8) * 45 + rng.uniform(-10, 10))
    elif shape in ("circle", "ring"):
        rotation = 0.0
    else:
        rotation = float(rng.uniform(-20, 20))
    bg = tuple(int(v) for v in rng.integers(0, 70, 3))
    img = Image.new("RGB", (S, S), bg)
    draw = ImageDraw.Draw(img)
    fill = COLORS[color]
    dark = tuple(int(v * 0.45) for v in fill)
    r = (rng.uniform(11, 13.5) if size == "large" else rng.uniform(6.5, 7.5)) * _SS
    # centres: single shapes anywhere that fits, several shapes on distinct cells of a 2x2 grid
    if count == 1:  # one of five anchors (the position word), jittered by up to 2 pixels
        anchor = POSITIONS[int(rng.integers(len(POSITIONS)))]
        off = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1), "center": (0, 0)}[anchor]
        reach = S / 2 - r - 1 * _SS
        cx, cy = (S / 2 + off[0] * reach + rng.uniform(-2, 2) * _SS, S / 2 + off[1] * reach + rng.uniform(-2, 2) * _SS)
        centres = [(cx, cy)]
    else:
        cells = rng.choice(4, size=count, replace=False)  # distinct cells of a 2x2 grid
        centres = [((c % 2 + 0.5) * S / 2 + rng.uniform(-1, 1) * _SS, (c // 2 + 0.5) * S / 2 + rng.uniform(-1, 1) * _SS)
                   for c in cells]
    for cx, cy in centres:
        pts = _outline(shape, cx, cy, r, rotation)
        if pts is None:
            box = [cx - r, cy - r, cx + r, cy + r]
            draw.ellipse(box, fill=fill)
            if shape == "ring":
                k = r * 0.5
                draw.ellipse([cx - k, cy - k, cx + k, cy + k], fill=bg)
        else:
            draw.polygon(pts, fill=fill)
    if texture == "striped":
        arr = np.array(img)
        mask = (arr == np.array(fill, dtype=np.uint8)).all(-1)
        yy = np.arange(S)[:, None] + np.arange(S)[None, :]
        stripes = ((yy // (3 * _SS)) % 2 == 1) & mask
        arr[stripes] = dark
        img = Image.fromarray(arr)
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)
    pos = _position_word(*centres[0], S) if count == 1 else None
    attrs = dict(shape=shape, color=color, size=size, count=count, texture=texture, rotation=rotation, position=pos)
    return np.asarray(img, dtype=np.uint8), ShapeScene(**attrs, caption=_caption(rng, attrs))


def make_shapes(n: int, seed: int) -> tuple[np.ndarray, list[ShapeScene]]:
    """`n` scenes from one seed: (uint8 array n x 32 x 32 x 3, list of attributes). Same seed, same scenes."""
    rng = np.random.default_rng(seed)
    images, scenes = [], []
    for _ in range(n):
        im, sc = render_scene(rng)
        images.append(im)
        scenes.append(sc)
    return np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), scenes
