"""The 15 common corruptions of CIFAR-10-C, at severities 1-5, for small (32x32) images.

Names and order are those of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019). The severity constants are the
CIFAR-specific ones of hendrycks/robustness `ImageNet-C/create_c/make_cifar_c.py`, not the ImageNet-C ones that the
`imagecorruptions` packages carry (e.g. Gaussian noise std 0.04-0.10 here vs 0.08-0.38 for ImageNet-C). The
primitives (disk kernel, plasma fractal, clipped zoom, motion-blur kernel, glass-blur shuffle) and the frost
textures come from the maintained `imagecorruptions-imaug` package; motion blur uses that package's kernel in place
of ImageMagick's, as the package does for ImageNet-C.
"""
from __future__ import annotations

import importlib.resources
from io import BytesIO

import cv2
import numpy as np
import skimage as sk
from imagecorruptions import corruptions as _ic
from PIL import Image
from scipy.ndimage import map_coordinates
from skimage.filters import gaussian

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)

# CIFAR-10-C constants, severity 1..5 (make_cifar_c.py)
CIFAR_C = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                  np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "elastic_transform": [(0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                          (0.1, 0.03, 0.03)],  # fractions of the image size, as IMSIZE * c in the script
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
}


def _gaussian_noise(x, c):
    return x + np.random.normal(size=x.shape, scale=c)


def _shot_noise(x, c):
    return np.random.poisson(x * c) / c


def _impulse_noise(x, c):
    return sk.util.random_noise(x, mode="s&p", amount=c, rng=int(np.random.randint(2**31)))


def _defocus_blur(x, c):
    k = _ic.disk(radius=c[0], alias_blur=c[1])
    return np.stack([cv2.filter2D(x[:, :, d].astype(np.float32), -1, k) for d in range(3)], -1)


def _glass_blur(x, c):
    h, w = x.shape[:2]
    y = np.uint8(gaussian(x, sigma=c[0], channel_axis=-1) * 255)
    y = _ic._shuffle_pixels_njit_glass_blur(h, w, y, c, int(np.random.randint(2**31)))
    return gaussian(y / 255.0, sigma=c[0], channel_axis=-1)


def _motion_blur(x, c):
    return _ic._motion_blur(x, radius=c[0], sigma=c[1], angle=np.random.uniform(-45, 45))


def _zoom_blur(x, c):
    x = x.astype(np.float32)
    h, w = x.shape[:2]
    out = np.zeros_like(x)
    for z in c:
        zoomed = _ic.clipped_zoom(x, z)
        th, tw = (zoomed.shape[0] - h) // 2, (zoomed.shape[1] - w) // 2
        out += zoomed[th:th + h, tw:tw + w]
    return (x + out) / (len(c) + 1)


def _snow(x, c):
    h, w = x.shape[:2]
    x = x.astype(np.float32)
    layer = np.random.normal(size=(h, w), loc=c[0], scale=c[1])
    layer = _ic.clipped_zoom(layer[..., None], c[2])
    th, tw = (layer.shape[0] - h) // 2, (layer.shape[1] - w) // 2
    layer = layer[th:th + h, tw:tw + w]
    layer[layer < c[3]] = 0
    layer = np.clip(layer.squeeze(-1), 0, 1)
    layer = _ic._motion_blur(layer, radius=c[4], sigma=c[5], angle=np.random.uniform(-135, -45))
    layer = (np.round(layer * 255) / 255.0)[..., None]
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray * 1.5 + 0.5)
    return x + layer + np.rot90(layer, k=2)


def _frost(x, c):
    h, w = x.shape[:2]
    name = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"][np.random.randint(5)]
    with importlib.resources.as_file(importlib.resources.files("imagecorruptions") / "frost" / name) as p:
        tex = cv2.imread(str(p))
    tex = cv2.resize(tex, (0, 0), fx=0.2 * max(h, w) / 32, fy=0.2 * max(h, w) / 32)
    y0, x0 = np.random.randint(0, tex.shape[0] - h), np.random.randint(0, tex.shape[1] - w)
    tex = tex[y0:y0 + h, x0:x0 + w][..., [2, 1, 0]] / 255.0
    return c[0] * x + c[1] * tex


def _fog(x, c):
    h, w = x.shape[:2]
    size = 1 << int(np.ceil(np.log2(max(h, w))))
    mx = x.max()
    x = x + c[0] * _ic.plasma_fractal(mapsize=size, wibbledecay=c[1])[:h, :w][..., None]
    return x * mx / (mx + c[0])


def _brightness(x, c):
    hsv = sk.color.rgb2hsv(x)
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
    return sk.color.hsv2rgb(hsv)


def _contrast(x, c):
    m = x.mean(axis=(0, 1), keepdims=True)
    return (x - m) * c + m


def _elastic_transform(x, c):
    h, w = x.shape[:2]
    size = min(h, w)
    alpha, sigma, affine = c[0] * size, c[1] * size, c[2] * size
    x = x.astype(np.float32)
    centre = np.float32((h, w)) // 2
    sq = min(h, w) // 3
    pts1 = np.float32([centre + sq, [centre[0] + sq, centre[1] - sq], centre - sq])
    pts2 = pts1 + np.random.uniform(-affine, affine, size=pts1.shape).astype(np.float32)
    x = cv2.warpAffine(x, cv2.getAffineTransform(pts1, pts2), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    dx = (gaussian(np.random.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (gaussian(np.random.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    gx, gy, gz = np.meshgrid(np.arange(w), np.arange(h), np.arange(3))
    idx = (np.reshape(gy + dy[..., None], (-1, 1)), np.reshape(gx + dx[..., None], (-1, 1)), np.reshape(gz, (-1, 1)))
    return map_coordinates(x, idx, order=1, mode="reflect").reshape(x.shape)


def _pixelate(x, c):
    h, w = x.shape[:2]
    im = Image.fromarray(np.uint8(np.clip(x, 0, 1) * 255))
    im = im.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
    return np.asarray(im) / 255.0


def _jpeg_compression(x, c):
    buf = BytesIO()
    Image.fromarray(np.uint8(np.clip(x, 0, 1) * 255)).save(buf, "JPEG", quality=c)
    return np.asarray(Image.open(buf)) / 255.0


_FUNCS = {name: globals()[f"_{name}"] for name in CORRUPTIONS}


def check(name: str, severity: int) -> None:
    """Fail with the list of valid values on an unknown corruption name or a severity outside 1-5."""
    if name not in _FUNCS:
        raise ValueError(f"unknown corruption {name!r}; the 15 CIFAR-10-C corruptions are: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"severity must be a whole number from 1 to 5, got {severity!r}")


def corrupt(image: np.ndarray, name: str, severity: int) -> np.ndarray:
    """One uint8 HxWx3 image corrupted by `name` at `severity` (uses NumPy's global RNG; `corrupt_batch` seeds it)."""
    check(name, severity)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    y = _FUNCS[name](image / 255.0, CIFAR_C[name][severity - 1])
    return np.uint8(np.clip(y, 0, 1) * 255)


def corrupt_batch(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupt a uint8 batch (n x H x W x 3); the same seed gives the same corrupted images. The corruptions draw
    from NumPy's global generator: it is seeded here and given back to the caller in the state it had."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return np.stack([corrupt(im, name, severity) for im in images]) if len(images) else images.copy()
    finally:
        np.random.set_state(state)
