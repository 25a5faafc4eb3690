"""Datasets that need neither mmengine nor mmdet: VTAB-1k lists and generated demo sets."""
from hst_fast.data.shapes import SHAPE_CLASSES, make_shapes_coco, make_shapes_vtab
from hst_fast.data.vtab import ResizeToTensor, VTABDataset, read_vtab_list

__all__ = ["SHAPE_CLASSES", "ResizeToTensor", "VTABDataset", "make_shapes_coco", "make_shapes_vtab", "read_vtab_list"]
