"""hst_fast: Hierarchical Side-Tuning (HST, arXiv 2310.05393) for timm Vision Transformers."""
__version__ = "0.1.0"

from hst_fast.adapter import load_adapter, save_adapter  # noqa: E402
from hst_fast.models import HST, HSTConfig, create_model  # noqa: E402


def trainable_parameters(model) -> int:
    """Number of parameters with ``requires_grad`` in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["HST", "HSTConfig", "create_model", "load_adapter", "save_adapter", "trainable_parameters"]
