"""The OpenMMLab layer of hst_fast: mmengine Runner pieces and the mmdet and mmseg integrations (imported by
configs through ``custom_imports`` and by the drivers only).

Importing it registers: the ``HSTViT`` backbone (mmengine's root registry, which mmdet's and mmseg's
fall back to); ``ShapesCocoDataset`` (mmdet registries); ``ShapesADE20KDataset`` and the ``CheckSegLabels``
transform (mmseg registries); the ``HSTClassifier`` model, ``ClsAccuracy`` metric, ``VTABDataset`` /
``ShapesVTABDataset`` and the ``AdapterCheckpointHook`` (mmengine's root registries); and allow-lists
what mmengine checkpoints hold for ``torch.load(weights_only=True)`` (``hst_fast.openmmlab.safe_load``).

``import hst_fast`` never imports this package: only configs and the train/test drivers do.
"""
from hst_fast.openmmlab.safe_load import allow_mmengine_checkpoints

allow_mmengine_checkpoints()

from hst_fast.openmmlab.backbone import HSTViT  # noqa: E402
from hst_fast.openmmlab.classifier import HSTClassifier  # noqa: E402
from hst_fast.openmmlab.datasets import ShapesCocoDataset, ShapesVTABDataset  # noqa: E402
from hst_fast.openmmlab.feature_cache_hook import FeatureCacheHook  # noqa: E402,F401
from hst_fast.openmmlab.hooks import AdapterCheckpointHook, load_task_adapter, save_task_adapter  # noqa: E402
from hst_fast.openmmlab.metrics import ClsAccuracy  # noqa: E402
from hst_fast.openmmlab.seg_data import CheckSegLabels, ShapesADE20KDataset  # noqa: E402

__all__ = [
    "AdapterCheckpointHook", "CheckSegLabels", "ClsAccuracy", "HSTClassifier", "HSTViT", "ShapesADE20KDataset",
    "ShapesCocoDataset", "ShapesVTABDataset",
    "allow_mmengine_checkpoints", "load_task_adapter", "save_task_adapter",
]
