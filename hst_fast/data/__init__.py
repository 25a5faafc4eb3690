"""Datasets that need neither mmengine nor mmdet: VTAB-1k lists and generated demo sets."""
from hst_fast.data.shapes import SHAPE_CLASSES, make_shapes_coco, make_shapes_vtab
from hst_fast.data.shapes_seg import SEG_CLASSES, majority_class_miou, make_shapes_ade
from hst_fast.data.vtab import ResizeToTensor, VTABDataset, read_vtab_list

__all__ = ["SEG_CLASSES", "SHAPE_CLASSES", "ResizeToTensor", "VTABDataset", "majority_class_miou", "make_shapes_ade",
           "make_shapes_coco", "make_shapes_vtab", "read_vtab_list"]
