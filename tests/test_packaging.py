"""The wheel installs kernels/ as hst_fast.kernels and never a top-level ``kernels`` package."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_kernels_into_hst_fast(tmp_path):
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*command, str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("hst_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hst_fast/kernels/side_attention.py" in names and "hst_fast/kernels/reference.py" in names
    assert "hst_fast/openmmlab/__init__.py" in names and "hst_fast/baselines/__init__.py" in names
    top_level = {name.split("/")[0] for name in names}
    assert "kernels" not in top_level, "a top-level 'kernels' package would shadow another registry package"
