"""Semantic segmentation data for mmseg's Runner: the generated ADE20K-format shapes set and a label check."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.logging import print_log
from mmseg.datasets import ADE20KDataset
from mmseg.registry import DATASETS, TRANSFORMS

from hst_fast.data import SEG_CLASSES, majority_class_miou, make_shapes_ade


@DATASETS.register_module()
class ShapesADE20KDataset(ADE20KDataset):
    """ADE20K-format coloured shapes (``hst_fast.data.make_shapes_ade``) under ``data_root``.

    ``generator`` holds the generator's parameters (num_train, num_val, image_size, max_shapes, seed);
    both splits are written together the first time either is built, and rewritten when the parameters
    change. Everything else is ``ADE20KDataset``'s (``data_prefix``, ``reduce_zero_label=True``, ...).
    Each split logs the mIoU of predicting its most frequent class everywhere: the score a model must beat.
    """

    GENERATES_DATA = True  # hst_fast.openmmlab.checks skips its paths: they exist once it is built
    METAINFO = dict(classes=SEG_CLASSES, palette=[[70, 70, 70], [220, 20, 60], [0, 128, 255], [60, 180, 75]])

    def __init__(self, *args: Any, data_root: str = "", generator: Optional[dict] = None, **kwargs: Any):
        make_shapes_ade(data_root, **(generator or {}))
        super().__init__(*args, data_root=data_root, **kwargs)
        split = self.data_prefix["seg_map_path"].rstrip("/").split("/")[-1]
        print_log(f"shapes ADE20K-format data at {data_root}: {len(self)} {split} images (generator "
                  f"{generator or 'defaults'}); predicting the majority class everywhere scores mIoU "
                  f"{100 * majority_class_miou(data_root, split):.2f}", logger="current")


@TRANSFORMS.register_module()
class CheckSegLabels(BaseTransform):
    """Raises ``ValueError`` naming the label file when a loaded label map holds a value that is neither a
    class index in [0, num_classes) nor ``ignore_index``; put it right after ``LoadAnnotations``.

    Without it such a value fails deep inside the loss (training) or is silently dropped by ``IoUMetric``'s
    histograms (evaluation). A pipeline without ``LoadAnnotations`` (inference) passes through unchanged.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        """num_classes: the model's classes; ignore_index: the label the loss and metric skip."""
        if num_classes < 1:
            raise ValueError(f"CheckSegLabels: num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def transform(self, results: dict) -> dict:
        labels = results.get("gt_seg_map")
        if labels is None:
            return results
        bad = (labels >= self.num_classes) & (labels != self.ignore_index)
        if bad.any():
            values = np.unique(labels[bad]).tolist()
            reduced = results.get("reduce_zero_label", False)
            encoding = (" (reduce_zero_label=True: file value v is class v - 1, value 0 is ignored; so the file "
                        f"holds values {[v + 1 for v in values[:10]]})") if reduced else ""
            raise ValueError(
                f"label map {results.get('seg_map_path')}: values {values[:10]} are outside the {self.num_classes} "
                f"classes [0, {self.num_classes - 1}] and are not the ignore index {self.ignore_index}{encoding}. "
                "Fix the file, or set num_classes of the decode heads and CheckSegLabels to the dataset's classes."
            )
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes}, ignore_index={self.ignore_index})"
