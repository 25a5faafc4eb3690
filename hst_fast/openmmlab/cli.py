"""What the train and test drivers share: reading the config as mmdet's tools do, and building the Runner."""
from __future__ import annotations

import os.path as osp
from typing import Optional

from mmengine.config import Config

from hst_fast.openmmlab.feature_cache_checks import configure_feature_cache


def load_config(path: str, launcher: str, cfg_options: Optional[dict], work_dir: Optional[str]) -> Config:
    """The config at ``path`` with ``--cfg-options`` merged and the work dir resolved
    (CLI > the config's ``work_dir`` > ``./work_dirs/<config name>``) and ``model.feature_cache`` checked."""
    cfg = Config.fromfile(path)
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
    """mmengine's ``Runner.from_cfg``, or the config's ``runner_type`` from the RUNNERS registry."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    return Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
