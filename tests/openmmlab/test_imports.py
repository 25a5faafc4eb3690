"""``import hst_fast`` (and its data package) must work without mmengine / mmdet / mmcv."""
from __future__ import annotations

import subprocess
import sys


def test_core_package_imports_no_openmmlab():
    code = ("import sys, hst_fast, hst_fast.data; "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('mmengine', 'mmdet', 'mmcv')); "
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
