"""Cartoon faces whose geometry is driven by FACS Action Units (AUs), with identity variation.

`render_face(aus, identity)` draws one 48x48 frame from per-AU intensities in [0, 1]; the PE-CLIP chapter calls it
once per frame of a clip. `make_faces` draws static frames captioned by their active AUs for CLIP pretraining
("a face with cheek raiser and lip corner puller"). AU names follow the FACS manual (Ekman & Friesen) and the
wording of PE-CLIP's class descriptions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

#: The Action Units the generator moves, in FACS order, with their FACS names.
AU_NAMES: dict[int, str] = {
    1: "Inner Brow Raiser", 2: "Outer Brow Raiser", 4: "Brow Lowerer", 5: "Upper Lid Raiser", 6: "Cheek Raiser",
    7: "Lid Tightener", 9: "Nose Wrinkler", 12: "Lip Corner Puller", 15: "Lip Corner Depressor",
    16: "Lower Lip Depressor", 20: "Lip Stretcher", 23: "Lip Tightener", 26: "Jaw Drop",
}
AUS = tuple(AU_NAMES)
IMAGE_SIZE = 48
ACTIVE = 0.5  # an AU at or above this intensity is named in the caption
_SS = 4

SKIN = [(255, 224, 189), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 205, 148)]
HAIR = [(30, 20, 10), (90, 60, 30), (200, 170, 90), (120, 40, 20), (60, 60, 60), (220, 220, 220)]


@dataclass(frozen=True)
class Identity:
    """Who the face belongs to: shape and colours that stay fixed while the AUs move."""
    face_w: float = 0.36     # half-width of the head, fraction of the image
    face_h: float = 0.44     # half-height
    skin: int = 0
    hair: int = 0
    hair_style: int = 0      # 0 none, 1 cap of hair, 2 hair with fringe
    eye_gap: float = 0.13    # half distance between eye centres
    eye_size: float = 0.045
    brow_w: float = 1.0      # brow thickness multiplier
    mouth_w: float = 0.12    # half-width of the relaxed mouth
    bg: tuple[int, int, int] = (90, 110, 140)

    @staticmethod
    def sample(rng: np.random.Generator) -> "Identity":
        return Identity(
            face_w=float(rng.uniform(0.31, 0.39)), face_h=float(rng.uniform(0.40, 0.46)),
            skin=int(rng.integers(len(SKIN))), hair=int(rng.integers(len(HAIR))), hair_style=int(rng.integers(3)),
            eye_gap=float(rng.uniform(0.11, 0.15)), eye_size=float(rng.uniform(0.038, 0.05)),
            brow_w=float(rng.uniform(0.8, 1.3)), mouth_w=float(rng.uniform(0.10, 0.14)),
            bg=tuple(int(v) for v in rng.integers(40, 200, 3)),
        )


def au_vector(aus: dict[int, float] | None = None) -> np.ndarray:
    """Intensities as a vector in `AUS` order; unknown AU numbers are an error."""
    v = np.zeros(len(AUS), np.float32)
    for k, x in (aus or {}).items():
        if k not in AU_NAMES:
            raise ValueError(f"AU{k} is not modelled; known AUs: {', '.join(f'AU{a}' for a in AUS)}")
        v[AUS.index(k)] = float(np.clip(x, 0.0, 1.0))
    return v


def render_face(aus: dict[int, float] | np.ndarray, identity: Identity = Identity()) -> np.ndarray:
    """One 48x48x3 uint8 frame of `identity` showing the AU intensities `aus` (dict AU->[0,1] or vector)."""
    a = dict(zip(AUS, au_vector(aus) if isinstance(aus, dict) else np.clip(np.asarray(aus, np.float32), 0, 1)))
    S = IMAGE_SIZE * _SS
    u = S  # unit: fractions of the image
    img = Image.new("RGB", (S, S), identity.bg)
    d = ImageDraw.Draw(img)
    cx, cy = 0.5 * u, 0.53 * u
    fw, fh = identity.face_w * u, identity.face_h * u
    jaw = a[26] * 0.04 * u
    skin = SKIN[identity.skin]
    hair = HAIR[identity.hair]
    line = tuple(int(c * 0.45) for c in skin)
    if identity.hair_style:
        d.ellipse([cx - fw * 1.08, cy - fh * 1.1, cx + fw * 1.08, cy + fh * 0.3], fill=hair)
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh + jaw], fill=skin)
    if identity.hair_style == 2:
        d.chord([cx - fw, cy - fh, cx + fw, cy - fh * 0.2], 180, 360, fill=hair)

    eye_y = cy - 0.06 * u
    gap = identity.eye_gap * u
    es = identity.eye_size * u
    # eyelids: AU5 opens, AU7 and AU6 narrow (AU6 pushes the lower lid up from below)
    open_h = es * (0.75 + 1.0 * a[5] - 0.55 * a[7] - 0.35 * a[6])
    open_h = max(open_h, es * 0.12)
    lower_shift = -0.25 * es * a[6]
    for side in (-1, 1):
        ex = cx + side * gap
        bottom = max(eye_y + open_h + lower_shift, eye_y - open_h + _SS)
        d.ellipse([ex - es * 1.3, eye_y - open_h, ex + es * 1.3, bottom], fill=(250, 250, 250),
                  outline=line, width=_SS)
        pr = min(es * 0.6, open_h * 0.95)
        d.ellipse([ex - pr, eye_y - pr, ex + pr, eye_y + pr], fill=(40, 30, 20))
        # brows: AU1 lifts the inner end, AU2 the outer end, AU4 lowers both and pulls them together
        base = eye_y - es * 2.2
        inner_y = base - a[1] * 0.08 * u + a[4] * 0.05 * u
        outer_y = base - a[2] * 0.08 * u + a[4] * 0.02 * u
        inner_x = ex - side * (es * 1.3 - a[4] * 0.03 * u)
        outer_x = ex + side * es * 1.6
        d.line([(inner_x, inner_y), (outer_x, outer_y)], fill=hair, width=int(identity.brow_w * 2.2 * _SS))
        # AU6: raised cheeks and crow's feet
        if a[6] > 0.05:
            ch_y = eye_y + es * 2.6 - a[6] * 0.02 * u
            rr = es * 1.2
            blush = tuple(int(c * (1 - 0.25 * a[6]) + 220 * 0.25 * a[6]) if i == 0 else int(c * (1 - 0.2 * a[6]))
                          for i, c in enumerate(skin))
            d.ellipse([ex - rr, ch_y - rr * 0.7, ex + rr, ch_y + rr * 0.7], fill=blush)
            fx = ex + side * es * 1.9
            d.line([(fx, eye_y - es * 0.6), (fx + side * es * 0.8 * a[6], eye_y - es)], fill=line, width=_SS)
            d.line([(fx, eye_y + es * 0.3), (fx + side * es * 0.8 * a[6], eye_y + es * 0.7)], fill=line, width=_SS)
    if a[4] > 0.05:  # vertical furrows between the brows
        for side in (-1, 1):
            x = cx + side * 0.012 * u
            d.line([(x, eye_y - es * 2.4), (x, eye_y - es * (2.4 - 1.4 * a[4]))], fill=line, width=_SS)
    # nose; AU9 shortens it and wrinkles the bridge
    nose_top, nose_bot = eye_y + es, cy + 0.08 * u - a[9] * 0.02 * u
    d.line([(cx, nose_top), (cx - 0.02 * u, nose_bot), (cx + 0.01 * u, nose_bot)], fill=line, width=int(1.5 * _SS))
    if a[9] > 0.05:
        for k in range(3):
            y = eye_y + es * (0.2 + 0.5 * k)
            w = 0.03 * u * a[9]
            d.line([(cx - w, y), (cx + w, y - 0.005 * u)], fill=line, width=_SS)

    # mouth: corners (x, y) and the opening of the lips
    my = cy + 0.2 * u + jaw * 0.5
    mw = identity.mouth_w * u * (1 + 0.5 * a[20] + 0.25 * a[12] - 0.15 * a[23])
    corner_dy = (-a[12] * 0.08 + a[15] * 0.07 + a[20] * 0.005) * u
    lip = max(0.012 * u * (1 - 0.8 * a[23]), 0.003 * u)
    opening = (a[26] * 0.1 + a[16] * 0.04) * u
    lower_drop = a[16] * 0.03 * u
    xs = np.linspace(-1, 1, 21)
    # the lips bend with the corners: corners at +-1, centre line stays at my
    bend = corner_dy * xs ** 2
    upper = [(cx + mw * x, my + b - opening * 0.3 * (1 - x ** 2)) for x, b in zip(xs, bend)]
    lower = [(cx + mw * x, my + b + (opening + lower_drop) * (1 - x ** 2)) for x, b in zip(xs, bend)]
    lip_col = (175, 70, 70)
    if opening > 0.004 * u:
        d.polygon(upper + lower[::-1], fill=(60, 20, 25))
        if a[16] > 0.3:  # lower teeth show
            teeth = [(cx + mw * 0.6 * x, my + (opening + lower_drop) * (1 - x ** 2) * 0.7) for x in xs]
            d.line(teeth, fill=(240, 240, 235), width=int(1.5 * _SS))
    d.line(upper, fill=lip_col, width=int(lip * 1.2) + _SS)
    d.line(lower, fill=lip_col, width=int(lip * 1.6) + _SS)
    return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), dtype=np.uint8)


def au_caption(aus: np.ndarray, rng: np.random.Generator | None = None) -> str:
    """Name the active AUs (intensity >= ACTIVE) in FACS order: "a face with cheek raiser and lip corner puller"."""
    names = [AU_NAMES[k].lower() for k, x in zip(AUS, aus) if x >= ACTIVE]
    if not names:
        body = "relaxed muscles"
    elif len(names) == 1:
        body = names[0]
    else:
        body = ", ".join(names[:-1]) + " and " + names[-1]
    templates = ("a face with {}.", "a photo of a face with {}.", "a cartoon face showing {}.")
    t = templates[0] if rng is None else templates[int(rng.integers(len(templates)))]
    return t.format(body)


def sample_aus(rng: np.random.Generator, p_active: float = 0.15, p_single: float = 0.25) -> np.ndarray:
    """Random AU intensities: with probability `p_single` exactly one AU is active; otherwise each AU is active
    (0.55-1) with probability `p_active`. Inactive AUs stay faint (0-0.25)."""
    if rng.random() < p_single:
        active = np.zeros(len(AUS), bool)
        active[rng.integers(len(AUS))] = True
    else:
        active = rng.random(len(AUS)) < p_active
    return np.where(active, rng.uniform(0.55, 1.0, len(AUS)), rng.uniform(0.0, 0.25, len(AUS))).astype(np.float32)


def make_faces(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`n` static faces of random identities and AUs: (uint8 n x 48 x 48 x 3, AU intensities n x 13, captions)."""
    rng = np.random.default_rng(seed)
    ims, aus, caps = [], [], []
    for _ in range(n):
        v = sample_aus(rng)
        ims.append(render_face(v, Identity.sample(rng)))
        aus.append(v)
        caps.append(au_caption(v, rng))
    return (np.stack(ims) if ims else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
            np.stack(aus) if aus else np.zeros((0, len(AUS)), np.float32), caps)
