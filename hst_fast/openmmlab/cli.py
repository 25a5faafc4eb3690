"""What the train and test drivers share: reading the config as mmdet's tools do, building the Runner, and
how a command ends on an error.

User errors (a config, dataset, checkpoint, adapter or input the user gave that cannot work) end the command
with exit status 2 and their message alone; program bugs keep Python's traceback. ``--debug`` or
``HST_FAST_DEBUG=1`` shows the traceback of user errors too. What counts as a user error is defined here
once (``is_user_error``).
"""
from __future__ import annotations

import itertools
import os
import os.path as osp
import sys
import time
import warnings
from typing import Callable, Iterator, List, Optional

from mmengine.config import Config

from hst_fast.adapter import AdapterError
from hst_fast.openmmlab.checks import CheckpointError, ConfigError
from hst_fast.openmmlab.feature_cache_checks import configure_feature_cache

DEBUG_ENV = "HST_FAST_DEBUG"
# Raised only for a user's mistake, wherever they come from.
USER_ERROR_TYPES = (ConfigError, CheckpointError, AdapterError)
# Modules whose job is checking what the user gave, and the exception types their checks raise: an exception of
# such a type raised in such a module is a user error, as is one raised `from` it (a message adding context).
# Everything else (torch's RuntimeErrors, an AttributeError, a KeyError in model code, an error raised while
# handling a user error) is a bug and keeps its traceback.
INPUT_CHECKS = {
    "hst_fast.openmmlab.checks": (FileNotFoundError, ValueError),
    "hst_fast.openmmlab.cli": (FileNotFoundError,),
    "hst_fast.openmmlab.model_args": (FileNotFoundError, TypeError, ValueError),
    "hst_fast.openmmlab.backbone": (ValueError,),  # a checkpoint without the ViT, images the config did not pad
    "hst_fast.openmmlab.seg_data": (ValueError,),  # label values outside the classes (CheckSegLabels)
    "hst_fast.openmmlab.feature_cache_checks": (TypeError, ValueError),
    "hst_fast.vit.inputs": (ValueError,),  # image batches of the wrong shape, dtype or size
    "hst_fast.vit.build": (FileNotFoundError, KeyError, RuntimeError, ValueError),  # pretrained file vs model
    "hst_fast.hst.config": (ValueError,),
    "hst_fast.baselines.config": (ValueError,),
    "hst_fast.backend": (ValueError,),  # kernel_backend names
    "hst_fast.factory": (ValueError,),  # options of another method (grad_checkpointing for a baseline)
    "hst_fast.data.vtab": (FileNotFoundError, ValueError),  # VTAB list files and the images they name
    "hst_fast.adapter": (FileNotFoundError,),
    # a config's `type=` naming nothing registered (KeyError), or keywords its class does not take (TypeError:
    # raised at the constructor call, before any of the constructor's own code runs)
    "mmengine.registry.build_functions": (KeyError, TypeError),
}
_run_index = itertools.count()


def _causes(err: BaseException) -> Iterator[BaseException]:
    """``err``, then what it was raised ``from`` (``__cause__``), and so on."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__


def _raised_in(err: BaseException) -> Optional[str]:
    """Module name of the frame that raised ``err`` (the innermost frame of its traceback)."""
    tb = err.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__")


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` reports a mistake in the user's input (``USER_ERROR_TYPES``, ``INPUT_CHECKS``)."""
    return any(isinstance(e, USER_ERROR_TYPES) or isinstance(e, INPUT_CHECKS.get(_raised_in(e), ()))
               for e in _causes(err))


def run_command(prog: str, run: Callable[[List[str]], None], argv: Optional[List[str]] = None) -> None:
    """Runs ``run(argv)``; a user error exits with status 2 after printing ``PROG: error: MESSAGE`` (no
    traceback unless ``--debug`` is in ``argv`` or ``HST_FAST_DEBUG=1``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        run(argv)
    except Exception as err:
        if debug or not is_user_error(err):
            raise
        print(f"{prog}: error: {err}\n(add --debug or set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def silence_third_party_warnings() -> None:
    """Filters, by message and module, warnings a normal run prints that the project cannot fix:

    - ``pkg_resources is deprecated as an API`` (setuptools >= 80.9, a UserWarning): mmengine 0.10.7, its last
      release, imports and reloads ``pkg_resources`` in ``mmengine.utils.package_utils`` whenever a config
      names an ``mmdet::`` base, printing it four times per command (from that module and, for the reloads,
      from ``importlib``). setuptools stays >= 77 (the license field of setup.py) and < 82 (82 removes
      ``pkg_resources``, which that mmengine code needs).
    - ``To copy construct from a tensor, it is recommended to use sourceTensor.detach().clone()``: mmdet 3.3.0's
      ``FCNMaskHead`` builds its mask predictions with ``bboxes.new_tensor(mask_preds)`` at every evaluation of a
      Mask R-CNN; the copy is what it wants (a new tensor on the boxes' device).
    """
    for module in ("mmengine.utils.package_utils", "importlib"):
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated as an API", category=UserWarning,
                                module=module)
    warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning,
                            module="mmdet.models.roi_heads.mask_heads.fcn_mask_head")


def load_config(path: str, launcher: str, cfg_options: Optional[dict], work_dir: Optional[str]) -> Config:
    """The config at ``path`` with ``--cfg-options`` merged and the work dir resolved
    (CLI > the config's ``work_dir`` > ``./work_dirs/<config name>``) and ``model.feature_cache`` checked."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"config file not found: {path} (absolute: {osp.abspath(path)})")
    try:
        cfg = Config.fromfile(path)
    except SyntaxError as err:  # mmengine parses the text: the file name is lost unless it is a base file's
        where = err.filename if err.filename not in (None, "<unknown>") else path
        raise ConfigError(f"{where}:{err.lineno}: {err.msg}: {(err.text or '').strip()}") from err
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir", None) is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(path))[0])
    configure_feature_cache(cfg)
    return cfg


def build_runner(cfg: Config):
    """mmengine's ``Runner.from_cfg``, or the config's ``runner_type`` from the RUNNERS registry.

    Every Runner of the process gets its own experiment name (``NAME-<n>``, n counting the Runners this
    process built; mmengine appends the start time) and visualizer name. mmengine names the run's logger,
    message hub and visualizer after them and hands out an existing instance of the same name, so two runs
    of one config started within the same second (train, then test, in one process) would share the first
    run's logger, and the second run's log would land in the first run's work dir; mmdet's default runtime
    names every visualizer 'visualizer', so any later detection run would write its scalars there too.
    mmengine also names the log folder ``<work_dir>/<start second>``: when the work dir already has one of the
    current second (a run of it started less than a second ago: train, then ``--resume``), the build waits for
    the next second, so the two logs stay apart.
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    while cfg.get("work_dir") and osp.isdir(osp.join(cfg.work_dir, time.strftime("%Y%m%d_%H%M%S"))):
        time.sleep(0.05)
    index = next(_run_index)
    name = cfg.get("experiment_name") or osp.splitext(osp.basename(cfg.filename or "run"))[0]
    cfg.experiment_name = f"{name}-{index}"
    if isinstance(cfg.get("visualizer"), dict) and cfg.visualizer.get("name"):
        cfg.visualizer.name = f"{cfg.visualizer.name}-{index}"
    return Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
