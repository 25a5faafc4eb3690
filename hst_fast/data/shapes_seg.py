"""A generated semantic-segmentation set of coloured shapes in ADE20K's folder layout and label encoding.

``make_shapes_ade`` draws scenes with ``hst_fast.data.shapes``' helpers: a textured background of random
dim colour, up to ``max_shapes`` non-overlapping rectangles, ellipses and triangles, and a per-pixel label
PNG each, laid out as ADEChallengeData2016::

    images/{training,validation}/NAME.jpg       annotations/{training,validation}/NAME.png

Each class has its own colour family (red rectangles, blue ellipses, green triangles, each shape's colour
jittered), as classes in real scenes differ in appearance as well as in shape: a small network trained for
minutes on CPU learns it (the shape alone, with random colours, takes far longer to learn per pixel).

Labels follow ADE20K: PNG value 0 is "unlabeled" (ignored by mmseg's ``reduce_zero_label=True``, never
written here: every pixel is known), value ``k + 1`` is class ``k`` of ``SEG_CLASSES``. So mmseg's
``ADE20KDataset`` reads the folder unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw

from hst_fast.data.shapes import SHAPE_CLASSES, _background, _place_boxes, _write_once, shape_polygon

SEG_CLASSES: Tuple[str, ...] = ("background",) + SHAPE_CLASSES
SPLITS = ("training", "validation")
# Colour family per shape class, RGB; each shape's colour is this plus a uniform jitter of +-COLOUR_JITTER per
# channel. The families stay apart, and above the backgrounds' dim base colours (20..110 per channel).
CLASS_COLOURS = {"rectangle": (215, 50, 50), "ellipse": (40, 110, 225), "triangle": (50, 190, 70)}
COLOUR_JITTER = 40


def draw_seg_scene(rng: np.random.Generator, size: int, max_shapes: int) -> Tuple[Image.Image, Image.Image]:
    """One RGB image with 1..max_shapes shapes and its label map (mode 'L', ADE20K encoding)."""
    pixels, _ = _background(rng, size)
    image = Image.fromarray(pixels)
    labels = Image.new("L", image.size, SEG_CLASSES.index("background") + 1)
    draw_image, draw_labels = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    for box in _place_boxes(rng, size, int(rng.integers(1, max_shapes + 1)), max(8, size // 8), size // 2):
        kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        points = [tuple(p) for p in shape_polygon(kind, box, rng)]
        colour = np.clip(np.array(CLASS_COLOURS[kind]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)
        draw_image.polygon(points, fill=tuple(int(c) for c in colour))
        draw_labels.polygon(points, fill=SEG_CLASSES.index(kind) + 1)  # the same polygon: the same pixels
    return image, labels


def make_shapes_ade(
    root: str,
    num_train: int = 400,
    num_val: int = 50,
    image_size: int = 128,
    max_shapes: int = 4,
    seed: int = 0,
) -> Path:
    """Writes the two splits into ``root`` (once; rewritten when the parameters change), deterministic by seed.

    Images are ``image_size`` square JPEGs (quality 95, as ADE20K ships JPEGs); label maps are 8-bit PNGs.
    """
    params = dict(kind="ade", num_train=num_train, num_val=num_val, image_size=image_size,
                  max_shapes=max_shapes, seed=seed, class_colours=CLASS_COLOURS, colour_jitter=COLOUR_JITTER)

    def write(tmp: Path) -> None:
        rng = np.random.default_rng(seed)
        for split, count in zip(SPLITS, (num_train, num_val)):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "annotations" / split).mkdir(parents=True)
            for index in range(count):
                image, labels = draw_seg_scene(rng, image_size, max_shapes)
                image.save(tmp / "images" / split / f"{split}_{index:05d}.jpg", quality=95)
                labels.save(tmp / "annotations" / split / f"{split}_{index:05d}.png")

    return _write_once(Path(root), params, write)


def majority_class_miou(root: str, split: str = "validation") -> float:
    """The mIoU (fraction) that predicting the split's most frequent class everywhere scores, as mmseg's
    ``IoUMetric`` computes it (ADE20K encoding, value 0 ignored; mean over classes present in the labels):
    the most frequent class's pixel share divided by the number of classes present."""
    counts = np.zeros(256, dtype=np.int64)
    paths = sorted((Path(root) / "annotations" / split).glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no label maps in {Path(root) / 'annotations' / split}")
    for path in paths:
        counts += np.bincount(np.asarray(Image.open(path)).ravel(), minlength=256)
    classes = counts[1:255]  # value 0 is "unlabeled"; 255 stays the ignore index after reduce_zero_label
    return float(classes.max() / classes.sum() / np.count_nonzero(classes))
