# make install : creates .venv/ (if missing) and installs everything, mmcv with compiled ops included.
# make demo    : the main job, after installing.       make test : lint + tests.   make bench : benchmarks.
VENV        := .venv
PYTHON      := $(VENV)/bin/python
PIP         := $(PYTHON) -m pip
CONSTRAINTS := requirements/constraints.txt
STAMP       := $(VENV)/.hst_fast-installed
GPU_TRITON  := requirements/gpu-triton.txt

.PHONY: install demo test bench lint
install: $(STAMP)

$(STAMP): setup.py $(CONSTRAINTS) $(GPU_TRITON) scripts/build_mmcv.sh
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) "setuptools>=77.0.3,<82" wheel
	$(PIP) install -q -c $(CONSTRAINTS) torch torchvision
	$(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation -e ".[dev]" mmengine
	$(PIP) install -q -c $(CONSTRAINTS) "$$(scripts/build_mmcv.sh $(PYTHON))" mmdet mmsegmentation ftfy regex
	$(PIP) install -q --no-deps --upgrade --target $(VENV)/triton-gpu -r $(GPU_TRITON)
	$(PYTHON) -c "import torch, torchvision, timm, triton, mmcv, mmdet, mmseg.apis, hst_fast.kernels; from mmcv.ops import RoIAlign, nms"
	touch $(STAMP)

demo: install
	OMP_NUM_THREADS=1 $(PYTHON) -m hst_fast.train configs/cascade_demo.py

test: install
	$(VENV)/bin/ruff check .
	$(PYTHON) -m pytest tests/ -q
	$(PYTHON) -m pytest bench/ --collect-only -q  # benchmarks must keep collecting, even without a GPU

bench: install
	$(PYTHON) -m pytest bench/ --benchmark-only -q

lint: install
	$(VENV)/bin/ruff check .
