"""mmengine / mmdet integration of hst_fast (imported by configs through ``custom_imports``).

Importing it registers: the ``HSTViT`` backbone and ``ShapesCocoDataset`` (mmdet registries); the
``HSTClassifier`` model, ``ClsAccuracy`` metric, ``VTABDataset`` / ``ShapesVTABDataset`` and the
``AdapterCheckpointHook`` (mmengine's root registries); and allow-lists what mmengine checkpoints
hold for ``torch.load(weights_only=True)`` (``hst_fast.det.safe_load``).

``import hst_fast`` never imports this package: only configs and the train/test drivers do.
"""
from hst_fast.det.safe_load import allow_mmengine_checkpoints

allow_mmengine_checkpoints()

from hst_fast.det.backbone import HSTViT  # noqa: E402
from hst_fast.det.classifier import ClsAccuracy, HSTClassifier, ShapesVTABDataset  # noqa: E402
from hst_fast.det.datasets import ShapesCocoDataset  # noqa: E402
from hst_fast.det.hooks import AdapterCheckpointHook, load_task_adapter, save_task_adapter  # noqa: E402

__all__ = [
    "AdapterCheckpointHook", "ClsAccuracy", "HSTClassifier", "HSTViT", "ShapesCocoDataset", "ShapesVTABDataset",
    "allow_mmengine_checkpoints", "load_task_adapter", "save_task_adapter",
]
