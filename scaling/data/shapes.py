"""Procedural images whose best achievable loss is known: the `shapes` built-in set.

Each image (size x size, RGB) holds, on a textured background with clutter and pixel noise, one
*target* glyph and up to `distractors` others, each in its own quadrant at a random offset:

- background: per channel a base level, a linear gradient and a sinusoidal grating of random
  frequency, orientation and phase, all dim (every channel at most BACKGROUND_MAX);
- clutter: up to `size` specks in dim random colours (also at most BACKGROUND_MAX);
- glyphs: K random 5 x 5 binary patterns (each touches all four sides of its 5 x 5 box, and no
  two are equal), drawn in a colour drawn from a range; the target's range is bright red, the
  distractors' are eight others, among them a dim red and an orange and a magenta that share
  the target's red channel, so colour must be read on all three channels;
- noise: uniform in [-PIXEL_NOISE, PIXEL_NOISE] on every pixel and channel.

The rule: the class is the pattern of the target glyph. A model must find the glyph of the
right colour among distractors of the same patterns, wherever it lies, against texture and noise.

No image is ambiguous, by construction. The colour ranges keep a margin wider than the noise:
every pixel of the target glyph has R >= 0.71 and G, B <= 0.19 after noise, while every other
pixel has R <= 0.56 or G > 0.4 or B > 0.4. So thresholding (R >= 0.62, G <= 0.3, B <= 0.3)
finds exactly the target's pixels, glyphs never overlap, and the 5 x 5 box around them is the
pattern: `read_class` does this, and the tests run it on every image.

Labels are then flipped with probability eps to a class drawn uniformly from the other K - 1.
The Bayes-optimal predictor puts 1 - eps on the image's class and eps / (K - 1) on each other,
so the lowest achievable cross-entropy (the known floor E) is

    E = -(1 - eps) ln(1 - eps) - eps ln(eps / (K - 1))   nats per image.

Everything (glyphs, images, flips) is drawn from the seed. Torch-free.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

GLYPH = 5  # glyphs are GLYPH x GLYPH
MAX_CLASSES = 64
MAX_DISTRACTORS = 3  # one glyph per quadrant
BACKGROUND_MAX = 0.32
PIXEL_NOISE = 0.04
TARGET = ((0.75, 1.0), (0.0, 0.15), (0.0, 0.15))  # (lo, hi) of R, G, B
DISTRACTOR_COLOURS = (
    ((0.42, 0.52), (0.0, 0.15), (0.0, 0.15)),  # dim red
    ((0.75, 1.0), (0.45, 0.65), (0.0, 0.15)),  # orange
    ((0.75, 1.0), (0.0, 0.15), (0.45, 0.65)),  # magenta
    ((0.75, 1.0), (0.75, 1.0), (0.0, 0.15)),  # yellow
    ((0.0, 0.15), (0.6, 1.0), (0.0, 0.15)),  # green
    ((0.0, 0.15), (0.0, 0.3), (0.6, 1.0)),  # blue
    ((0.0, 0.15), (0.6, 1.0), (0.6, 1.0)),  # cyan
    ((0.75, 1.0), (0.75, 1.0), (0.75, 1.0)),  # white
)
CHUNK = 8192  # images drawn per vectorised batch


def bayes_loss(label_noise: float, classes: int) -> float:
    """E = -(1 - eps) ln(1 - eps) - eps ln(eps / (K - 1)), nats: the cross-entropy of the
    Bayes-optimal predictor when labels are flipped at rate eps to one of the other K - 1."""
    eps, K = label_noise, classes
    out = 0.0 if eps == 1 else -(1 - eps) * math.log(1 - eps)
    return out - (eps * math.log(eps / (K - 1)) if eps > 0 else 0.0)


def glyphs(classes: int, seed: int) -> np.ndarray:
    """(K, 5, 5) bool: distinct random patterns, each touching all four sides of its box."""
    rng = np.random.default_rng([seed, 21])
    out: list[np.ndarray] = []
    seen: set[bytes] = set()
    while len(out) < classes:
        g = rng.random((GLYPH, GLYPH)) < 0.5
        if not (g[0].any() and g[-1].any() and g[:, 0].any() and g[:, -1].any()) or g.tobytes() in seen:
            continue
        seen.add(g.tobytes())
        out.append(g)
    return np.stack(out)


def _colours(rng: np.random.Generator, n: int, ranges: np.ndarray) -> np.ndarray:
    """(n, 3) colours, each channel uniform in its (lo, hi); ranges (n, 3, 2)."""
    lo, hi = ranges[..., 0], ranges[..., 1]
    return lo + (hi - lo) * rng.random((n, 3))


def draw(classes_of: np.ndarray, pattern: np.ndarray, size: int, distractors: int, rng: np.random.Generator) -> np.ndarray:
    """Images (n, size, size, 3) uint8 whose target glyph is pattern[classes_of[i]]."""
    n, K, half = len(classes_of), len(pattern), size // 2
    ys, xs = (np.mgrid[0:size, 0:size] / size)[:, None, :, :, None]  # (1, S, S, 1) each
    base = rng.uniform(0.0, 0.12, (n, 1, 1, 3))
    grad_x, grad_y = rng.uniform(-0.08, 0.08, (2, n, 1, 1, 3))
    amp = rng.uniform(0.0, 0.06, (n, 1, 1, 3))
    freq, angle, phase = rng.uniform(0.5, 3.0, (n, 1, 1, 1)), rng.uniform(0, np.pi, (n, 1, 1, 1)), rng.uniform(0, 2 * np.pi, (n, 1, 1, 1))
    wave = np.sin(2 * np.pi * freq * (np.cos(angle) * xs + np.sin(angle) * ys) + phase)
    img = np.clip(base + grad_x * xs + grad_y * ys + amp * (1 + wave), 0.0, BACKGROUND_MAX)  # (n, S, S, 3)
    rows = np.arange(n)
    specks = rng.integers(0, size + 1, n)  # clutter
    for j in range(size):
        on = rows[j < specks]
        img[on, rng.integers(0, size, len(on)), rng.integers(0, size, len(on))] = rng.uniform(0, BACKGROUND_MAX, (len(on), 3))
    quadrants = np.argsort(rng.random((n, 4)), axis=1)  # the target takes the first
    objects = 1 + rng.integers(0, distractors + 1, n)
    dy, dx = np.nonzero(np.ones((GLYPH, GLYPH), dtype=bool))  # the 25 cells of a glyph box
    palette = np.array(DISTRACTOR_COLOURS)
    for j in range(1 + distractors):
        on = rows[j < objects]
        m = len(on)
        if j == 0:
            which, ranges = classes_of[on], np.broadcast_to(np.array(TARGET), (m, 3, 2))
        else:
            which, ranges = rng.integers(0, K, m), palette[rng.integers(0, len(palette), m)]
        colour = _colours(rng, m, ranges)  # (m, 3)
        q = quadrants[on, j]
        top = (q // 2) * half + rng.integers(0, half - GLYPH + 1, m)
        left = (q % 2) * half + rng.integers(0, half - GLYPH + 1, m)
        mask = pattern[which].reshape(m, -1)  # (m, 25)
        i, cell = np.nonzero(mask)
        img[on[i], top[i] + dy[cell], left[i] + dx[cell]] = colour[i]
    img += rng.uniform(-PIXEL_NOISE, PIXEL_NOISE, img.shape)
    return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def read_class(pixels: np.ndarray, pattern: np.ndarray) -> int:
    """The class an image shows, read from its pixels alone by the rule the margins guarantee:
    the target's pixels are those with R >= 0.62, G <= 0.3, B <= 0.3, and their 5 x 5 box is the
    pattern. Returns -1 when no pattern matches (which the construction rules out)."""
    f = pixels.astype(np.float64) / 255.0
    hit = (f[..., 0] >= 0.62) & (f[..., 1] <= 0.3) & (f[..., 2] <= 0.3)
    ys, xs = np.nonzero(hit)
    if len(ys) == 0 or ys.max() - ys.min() != GLYPH - 1 or xs.max() - xs.min() != GLYPH - 1:
        return -1
    box = hit[ys.min() : ys.min() + GLYPH, xs.min() : xs.min() + GLYPH]
    match = np.flatnonzero((pattern == box[None]).all(axis=(1, 2)))
    return int(match[0]) if len(match) == 1 else -1


def shapes_images(classes: int, size: int, distractors: int, label_noise: float, images: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(pixels (n, S, S, 3) uint8, labels as written (n,), true classes (n,), source record)."""
    pattern = glyphs(classes, seed)
    rng = np.random.default_rng([seed, 22])
    true = rng.integers(0, classes, images)
    flipped = rng.random(images) < label_noise
    labels = np.where(flipped, (true + rng.integers(1, classes, images)) % classes, true)  # uniform over the other K - 1
    pixels = np.empty((images, size, size, 3), dtype=np.uint8)
    for lo in range(0, images, CHUNK):
        pixels[lo : lo + CHUNK] = draw(true[lo : lo + CHUNK], pattern, size, distractors, np.random.default_rng([seed, 23, lo]))
    source = {
        "type": "shapes",
        "classes": classes,
        "image_size": size,
        "distractors": distractors,
        "label_noise": label_noise,
        "images": images,
        "seed": seed,
        "label_flips": int(flipped.sum()),
        "loss_floor_nats": bayes_loss(label_noise, classes),
        "loss_floor_method": "exact: the Bayes cross-entropy under symmetric label noise",
        "loss_floor_error_nats": 0.0,
    }
    return pixels, labels, true, source
