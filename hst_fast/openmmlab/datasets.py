"""Datasets for the Runner: the generated shapes detection set (an mmdet ``CocoDataset``), VTAB-1k lists and
the generated VTAB-format shapes task (mmengine's root registry)."""
from __future__ import annotations

from typing import Any, Optional

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS
from mmengine.logging import print_log
from mmengine.registry import DATASETS as ROOT_DATASETS

from hst_fast.data import SHAPE_CLASSES, VTABDataset, make_shapes_coco, make_shapes_vtab


@DATASETS.register_module()
class ShapesCocoDataset(CocoDataset):
    """COCO-format coloured shapes (``hst_fast.data.make_shapes_coco``) under ``data_root``.

    ``generator`` holds the generator's parameters (num_train, num_val, image_size, max_shapes, seed);
    both splits are written together the first time either is built, and rewritten when the parameters
    change. Everything else is ``CocoDataset``'s (``ann_file='annotations/train.json'``, ``data_prefix``...).
    """

    GENERATES_DATA = True  # hst_fast.openmmlab.checks skips its paths: they exist once it is built
    METAINFO = dict(classes=SHAPE_CLASSES, palette=[(220, 20, 60), (0, 128, 255), (60, 180, 75)])

    def __init__(self, *args: Any, data_root: str = "", generator: Optional[dict] = None, **kwargs: Any):
        make_shapes_coco(data_root, **(generator or {}))
        print_log(f"shapes COCO data at {data_root} (generator {generator or 'defaults'})", logger="current")
        super().__init__(*args, data_root=data_root, **kwargs)


ROOT_DATASETS.register_module(module=VTABDataset)


@ROOT_DATASETS.register_module()
class ShapesVTABDataset(VTABDataset):
    """A generated VTAB-1k-format task (``hst_fast.data.make_shapes_vtab``), written into ``data_root``
    on first use; ``generator`` holds its parameters (num_train, num_test, image_size, seed)."""

    GENERATES_DATA = True  # hst_fast.openmmlab.checks skips its paths: they exist once it is built

    def __init__(self, data_root: str, ann_file: str, generator: Optional[dict] = None, **kwargs: Any):
        make_shapes_vtab(data_root, **(generator or {}))
        super().__init__(data_root, ann_file, **kwargs)
        print_log(f"generated VTAB-format shapes data at {data_root}: {len(self)} images in {ann_file}",
                  logger="current")
