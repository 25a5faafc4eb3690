"""HST models: configuration, side network, the HST wrapper and its factory."""
from hst_fast.models.config import HSTConfig
from hst_fast.models.factory import create_model
from hst_fast.models.hst import HST

__all__ = ["HST", "HSTConfig", "create_model"]
