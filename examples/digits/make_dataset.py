"""Generate the digits dataset: 16x16 handwritten-like digits drawn from stroke templates.

Each image is a digit's strokes under a random rotation, scale, shear, shift and pen width, plus
noise: a real ten-class vision task that a small network learns in a minute on a CPU, with no
download. Writes ``data/digits.npz`` (train and held-out test splits).

    python3 make_dataset.py [--out data/digits.npz] [--train 24000] [--test 4000] [--seed 0]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
from pathlib import Path

import numpy as np

SIZE = 16
# Strokes of each digit as polylines in a unit box (x right, y down).
STROKES: dict[int, list[list[tuple[float, float]]]] = {
    0: [
        [
            (0.5, 0.05),
            (0.2, 0.2),
            (0.15, 0.5),
            (0.2, 0.8),
            (0.5, 0.95),
            (0.8, 0.8),
            (0.85, 0.5),
            (0.8, 0.2),
            (0.5, 0.05),
        ]
    ],
    1: [[(0.3, 0.25), (0.55, 0.05), (0.55, 0.95)], [(0.3, 0.95), (0.8, 0.95)]],
    2: [[(0.2, 0.25), (0.45, 0.05), (0.75, 0.15), (0.75, 0.4), (0.2, 0.95), (0.85, 0.95)]],
    3: [[(0.2, 0.1), (0.8, 0.1), (0.45, 0.45), (0.8, 0.6), (0.75, 0.9), (0.2, 0.9)]],
    4: [[(0.65, 0.95), (0.65, 0.05), (0.15, 0.65), (0.9, 0.65)]],
    5: [[(0.8, 0.05), (0.25, 0.05), (0.2, 0.45), (0.7, 0.45), (0.8, 0.7), (0.6, 0.95), (0.2, 0.9)]],
    6: [
        [(0.75, 0.05), (0.3, 0.35), (0.2, 0.75), (0.5, 0.95), (0.8, 0.75), (0.6, 0.5), (0.25, 0.6)]
    ],
    7: [[(0.15, 0.05), (0.85, 0.05), (0.4, 0.95)], [(0.35, 0.5), (0.75, 0.5)]],
    8: [
        [
            (0.5, 0.5),
            (0.2, 0.3),
            (0.5, 0.05),
            (0.8, 0.3),
            (0.5, 0.5),
            (0.2, 0.75),
            (0.5, 0.95),
            (0.8, 0.75),
            (0.5, 0.5),
        ]
    ],
    9: [[(0.75, 0.4), (0.45, 0.5), (0.2, 0.3), (0.5, 0.05), (0.8, 0.3), (0.7, 0.95)]],
}


@functools.cache
def _points(digit: int, per_unit: int = 40) -> np.ndarray:
    pts = []
    for line in STROKES[digit]:
        for (x0, y0), (x1, y1) in itertools.pairwise(line):
            n = max(2, int(np.hypot(x1 - x0, y1 - y0) * per_unit))
            t = np.linspace(0.0, 1.0, n)
            pts.append(np.stack([x0 + (x1 - x0) * t, y0 + (y1 - y0) * t], axis=1))
    return np.concatenate(pts)


def render(labels: np.ndarray, rng: np.random.Generator, what: str = "images") -> np.ndarray:
    grid = np.stack(np.meshgrid(np.arange(SIZE), np.arange(SIZE)), -1).reshape(-1, 2) + 0.5
    images = np.empty((len(labels), SIZE * SIZE), dtype=np.float32)
    for i, digit in enumerate(labels):
        pts = _points(int(digit)) - 0.5
        angle = rng.normal(0, 0.18)
        scale = rng.uniform(0.75, 1.05) * np.array([rng.uniform(0.8, 1.15), 1.0])
        shear = rng.normal(0, 0.15)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        affine = rot @ np.array([[1.0, shear], [0.0, 1.0]]) * scale
        pts = pts @ affine.T * (SIZE - 3) + SIZE / 2 + rng.normal(0, 1.0, 2)
        pts += rng.normal(0, 0.25, pts.shape)  # a shaky pen
        width = rng.uniform(0.6, 1.2)
        # Squared distance of each pixel to the nearest pen point (x and y added by hand:
        # numpy's sum over an axis of two is ten times slower).
        dx = grid[:, 0, None] - pts[None, :, 0]
        dy = grid[:, 1, None] - pts[None, :, 1]
        d2 = (dx**2 + dy**2).min(1)
        img = np.exp(-d2 / (2 * width**2))
        img += rng.normal(0, 0.12, img.shape)
        images[i] = np.clip(img, 0, 1)
        if (i + 1) % 2000 == 0:
            print(f"{what}: {i + 1}/{len(labels)}", flush=True)  # a status line for the demo
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "data" / "digits.npz"))
    parser.add_argument("--train", type=int, default=24000)
    parser.add_argument("--test", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        print(f"{out} exists; keeping it")
        return
    rng = np.random.default_rng(args.seed)
    y_train = rng.integers(0, 10, args.train)
    y_test = rng.integers(0, 10, args.test)
    x_train = render(y_train, rng, "training images")
    x_test = render(y_test, rng, "held-out images")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        x_train=x_train,
        y_train=y_train.astype(np.int64),
        x_test=x_test,
        y_test=y_test.astype(np.int64),
    )
    os.replace(tmp, out)
    print(f"wrote {out}: {args.train} training and {args.test} held-out images of {SIZE}x{SIZE}")


if __name__ == "__main__":
    main()
