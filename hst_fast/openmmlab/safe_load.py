"""Resuming mmengine checkpoints with torch's default ``torch.load(weights_only=True)`` kept on.

An mmengine checkpoint holds, besides tensors: the message hub's ``HistoryBuffer`` objects (logged
scalars) and numpy scalars and arrays (e.g. ``eta`` in the runtime info). Those few types are
allow-listed with ``torch.serialization.add_safe_globals``; nothing else is, and the unpickler stays
restricted for every other global.

One more global would be needed by default: ``HistoryBuffer.__getstate__`` stores its statistics
*functions*, which pickle as ``builtins.getattr(HistoryBuffer, 'min')``, and allow-listing
``getattr`` would let a checkpoint reach any attribute of any allowed object. Instead a
``copyreg`` reducer (the standard way to define how a third-party class pickles) saves a
``HistoryBuffer`` as ``HistoryBuffer(log_history, count_history, max_length)`` with plain Python
lists; loading re-creates the default statistics (min, max, current, mean) in ``__init__``.
Checkpoints written by plain mmengine still carry the ``getattr`` form and are refused, with torch's
message naming the global.
"""
from __future__ import annotations

import copyreg
from typing import List, Tuple

import numpy as np
import torch
from mmengine.logging import HistoryBuffer


def _reduce_history_buffer(buffer: HistoryBuffer) -> Tuple[type, tuple]:
    log_history, count_history = buffer.data
    return HistoryBuffer, (log_history.tolist(), count_history.tolist(), buffer.max_length)


def _numpy_globals() -> List:
    """numpy's pickle entry points for arrays, scalars and dtypes (module moved in numpy 2)."""
    multiarray = getattr(np, "_core", None)
    multiarray = multiarray.multiarray if multiarray is not None else np.core.multiarray
    dtype_classes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dict.fromkeys(dtype_classes)]


def allow_mmengine_checkpoints() -> None:
    """Registers the reducer and the allow-list; idempotent."""
    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)
    torch.serialization.add_safe_globals([HistoryBuffer, *_numpy_globals()])
