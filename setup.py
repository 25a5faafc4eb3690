"""Installs ``hst_fast``; the top-level ``kernels/`` folder becomes ``hst_fast.kernels``.

There is deliberately no top-level ``kernels`` package: another registry package owns that name.
"""
import re

from setuptools import find_packages, setup

PACKAGES = find_packages(include=["hst_fast", "hst_fast.*"]) + ["hst_fast.kernels"]
PACKAGE_DIR = {"hst_fast": "hst_fast", "hst_fast.kernels": "kernels"}
VERSION = re.search(r'__version__ = "([^"]+)"', open("hst_fast/version.py", encoding="utf-8").read()).group(1)

setup(
    name="hst_fast",
    version=VERSION,
    description="Hierarchical Side-Tuning (HST) for Vision Transformers, with fused Triton kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    install_requires=["torch>=2.11", "timm>=1.0", "safetensors>=0.4", "numpy"],
    extras_require={
        "dev": ["pytest", "pytest-benchmark", "hypothesis", "ruff"],
        "det": ["mmengine==0.10.7", "mmdet==3.3.0", "mmcv>=2.0.0rc4,<2.2.0"],
        "seg": ["mmengine==0.10.7", "mmsegmentation==1.2.2", "mmcv>=2.0.0rc4,<2.2.0", "ftfy", "regex", "prettytable"],
        "xformers": ["xformers"],
    },
)
