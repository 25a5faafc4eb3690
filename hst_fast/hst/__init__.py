"""HST itself (HST.md): configuration, the two trunks, bridges, side blocks and stages, the model."""
from hst_fast.hst.config import HSTConfig
from hst_fast.hst.model import HST

__all__ = ["HST", "HSTConfig"]
