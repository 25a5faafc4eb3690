"""Generated datasets of coloured shapes, deterministic by seed, for demos and tests.

- ``make_shapes_coco``: a COCO-format instance-segmentation set (boxes + polygon masks).
- ``make_shapes_vtab``: a VTAB-1k-format classification set (``train800val200.txt``, ``test.txt``).

Each is written once into its folder, atomically (a temporary sibling folder renamed into place, so
two processes of a distributed run never see half a dataset), with a ``generator.json`` recording the
parameters; a folder written with other parameters is regenerated. Only numpy and Pillow are used.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ("rectangle", "ellipse", "triangle")
GENERATOR_FILE = "generator.json"
FORMAT_VERSION = 1


def shape_polygon(kind: str, box: Tuple[float, float, float, float], rng: np.random.Generator) -> np.ndarray:
    """A [P, 2] polygon (x, y) of ``kind`` inscribed in ``box`` = (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    if kind == "rectangle":
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    if kind == "ellipse":
        angles = np.linspace(0.0, 2.0 * np.pi, 32, endpoint=False)
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)
    if kind == "triangle":  # apex somewhere on the top edge, base on the bottom edge
        apex = x0 + rng.uniform(0.2, 0.8) * (x1 - x0)
        return np.array([[apex, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    raise ValueError(f"unknown shape {kind!r}")


def _polygon_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _background(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """A dim textured background [size, size, 3] uint8 and its mean colour."""
    base = rng.uniform(20, 110, size=3)
    noise = rng.normal(0.0, 12.0, size=(size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8), base


def _shape_colour(rng: np.random.Generator, background: np.ndarray) -> Tuple[int, int, int]:
    """A saturated colour far enough from the background to be visible."""
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - background).sum() > 180:
            return tuple(int(c) for c in colour)


def _place_boxes(rng: np.random.Generator, size: int, count: int, min_side: int, max_side: int) -> List[Tuple]:
    """Up to ``count`` non-overlapping boxes (a 2 px gap), so every mask is fully visible."""
    boxes: List[Tuple[float, float, float, float]] = []
    for _ in range(count * 20):
        if len(boxes) == count:
            break
        w, h = rng.integers(min_side, max_side + 1, size=2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        box = (float(x0), float(y0), float(x0 + w), float(y0 + h))
        if all(box[2] + 2 <= b[0] or b[2] + 2 <= box[0] or box[3] + 2 <= b[1] or b[3] + 2 <= box[1] for b in boxes):
            boxes.append(box)
    return boxes


def draw_scene(rng: np.random.Generator, size: int, max_shapes: int) -> Tuple[Image.Image, List[Dict]]:
    """One image with 1..max_shapes shapes; returns it and [{'kind', 'polygon'}] per shape."""
    pixels, background = _background(rng, size)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    shapes = []
    boxes = _place_boxes(rng, size, int(rng.integers(1, max_shapes + 1)), max(8, size // 8), size // 2)
    for box in boxes:
        kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        polygon = shape_polygon(kind, box, rng)
        draw.polygon([tuple(p) for p in polygon], fill=_shape_colour(rng, background))
        shapes.append(dict(kind=kind, polygon=polygon))
    return image, shapes


def _write_once(root: Path, params: Dict, write) -> Path:
    """Runs ``write(tmp_dir)`` unless ``root`` already holds a dataset made with ``params``."""
    params = dict(params, format_version=FORMAT_VERSION)
    marker = root / GENERATOR_FILE
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write(tmp)
        (tmp / GENERATOR_FILE).write_text(json.dumps(params, indent=2, sort_keys=True))
        if root.exists():  # stale parameters (or another process just finished): replace
            if marker.is_file() and json.loads(marker.read_text()) == params:
                return root
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:  # another process renamed its identical copy first
            if not (marker.is_file() and json.loads(marker.read_text()) == params):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def make_shapes_coco(
    root: str,
    num_train: int = 400,
    num_val: int = 50,
    image_size: int = 160,
    max_shapes: int = 4,
    seed: int = 0,
) -> Path:
    """Writes ``root/{train,val}/*.png`` and ``root/annotations/{train,val}.json`` (COCO instances).

    Categories are ``SHAPE_CLASSES`` (ids 1..3); masks are the exact drawn polygons, boxes their bounds.
    """
    params = dict(kind="coco", num_train=num_train, num_val=num_val, image_size=image_size,
                  max_shapes=max_shapes, seed=seed)

    def write(tmp: Path) -> None:
        (tmp / "annotations").mkdir()
        rng = np.random.default_rng(seed)
        for split, count in (("train", num_train), ("val", num_val)):
            (tmp / split).mkdir()
            images, annotations = [], []
            for index in range(count):
                image, shapes = draw_scene(rng, image_size, max_shapes)
                file_name = f"{index:06d}.png"
                image.save(tmp / split / file_name)
                images.append(dict(id=index + 1, file_name=file_name, width=image_size, height=image_size))
                for shape in shapes:
                    polygon = shape["polygon"]
                    x0, y0 = polygon.min(axis=0)
                    x1, y1 = polygon.max(axis=0)
                    annotations.append(dict(
                        id=len(annotations) + 1, image_id=index + 1,
                        category_id=SHAPE_CLASSES.index(shape["kind"]) + 1,
                        bbox=[round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2),
                              round(float(y1 - y0), 2)],
                        area=round(_polygon_area(polygon), 2),
                        segmentation=[[round(float(v), 2) for v in polygon.reshape(-1)]],
                        iscrowd=0,
                    ))
            categories = [dict(id=i + 1, name=name) for i, name in enumerate(SHAPE_CLASSES)]
            coco = dict(images=images, annotations=annotations, categories=categories)
            (tmp / "annotations" / f"{split}.json").write_text(json.dumps(coco))

    return _write_once(Path(root), params, write)


def make_shapes_vtab(
    root: str,
    num_train: int = 200,
    num_test: int = 100,
    image_size: int = 64,
    seed: int = 0,
    classes: Sequence[str] = SHAPE_CLASSES,
) -> Path:
    """Writes a VTAB-1k-format folder: ``images/*.png`` and the lists ``train800val200.txt``
    (all training images), ``train800.txt``/``val200.txt`` (its 80/20 split) and ``test.txt``;
    each line ``images/NAME.png LABEL``, LABEL the index of the image's single shape in ``classes``."""
    params = dict(kind="vtab", num_train=num_train, num_test=num_test, image_size=image_size, seed=seed,
                  classes=list(classes))

    def write(tmp: Path) -> None:
        (tmp / "images").mkdir()
        rng = np.random.default_rng(seed)
        lines: Dict[str, List[str]] = {"train": [], "test": []}
        for split, count in (("train", num_train), ("test", num_test)):
            for index in range(count):
                label = int(rng.integers(len(classes)))
                pixels, background = _background(rng, image_size)
                image = Image.fromarray(pixels)
                side = rng.integers(image_size // 3, image_size - 4, size=2)
                x0, y0 = rng.integers(0, image_size - side[0]), rng.integers(0, image_size - side[1])
                box = (float(x0), float(y0), float(x0 + side[0]), float(y0 + side[1]))
                polygon = shape_polygon(classes[label], box, rng)
                ImageDraw.Draw(image).polygon([tuple(p) for p in polygon], fill=_shape_colour(rng, background))
                name = f"images/{split}_{index:05d}.png"
                image.save(tmp / name)
                lines[split].append(f"{name} {label}")
        cut = len(lines["train"]) * 4 // 5
        (tmp / "train800val200.txt").write_text("\n".join(lines["train"]) + "\n")
        (tmp / "train800.txt").write_text("\n".join(lines["train"][:cut]) + "\n")
        (tmp / "val200.txt").write_text("\n".join(lines["train"][cut:]) + "\n")
        (tmp / "test.txt").write_text("\n".join(lines["test"]) + "\n")

    return _write_once(Path(root), params, write)
