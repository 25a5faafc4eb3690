"""Makes ``hst_fast.kernels`` importable from a plain copy of the checkout, without ``pip install``.

setup.py installs the top-level ``kernels/`` folder as ``hst_fast.kernels``; a checkout on ``PYTHONPATH`` has
``hst_fast/`` but no ``hst_fast/kernels/``. ``alias_kernels`` puts a finder first on ``sys.meta_path`` that maps the
name to the ``kernels/`` folder beside the ``hst_fast`` package Python will import, as setuptools' editable install
does. Imports neither torch nor hst_fast, so it runs before them.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

NAME = "hst_fast.kernels"


class KernelsFinder(importlib.abc.MetaPathFinder):
    """Finds ``hst_fast.kernels`` in ``folder``; its submodules then load from the package's ``__path__``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname != NAME:
            return None
        return importlib.util.spec_from_file_location(NAME, self.folder / "__init__.py",
                                                      submodule_search_locations=[str(self.folder)])


def alias_kernels() -> Path | None:
    """Registers ``kernels/`` beside the importable ``hst_fast`` package as ``hst_fast.kernels`` and returns that
    folder; None (nothing done) when that package has its own ``kernels`` (an installed copy), when there is no
    ``kernels/`` beside it, or when ``hst_fast.kernels`` is already imported."""
    if NAME in sys.modules:
        return None
    spec = importlib.util.find_spec("hst_fast")  # a top-level name: located without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations))).resolve()
    folder = package.parent / "kernels"
    if (package / "kernels").exists() or not (folder / "__init__.py").is_file():
        return None
    sys.meta_path.insert(0, KernelsFinder(folder))
    return folder
