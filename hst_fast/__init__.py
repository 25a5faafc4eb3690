"""hst_fast: Hierarchical Side-Tuning (HST, arXiv 2310.05393) for timm Vision Transformers."""
from hst_fast.adapter import load_adapter, save_adapter
from hst_fast.factory import create_model
from hst_fast.hst import HST, HSTConfig
from hst_fast.version import __version__


def trainable_parameters(model) -> int:
    """Number of parameters with ``requires_grad`` in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["HST", "HSTConfig", "__version__", "create_model", "load_adapter", "save_adapter", "trainable_parameters"]
