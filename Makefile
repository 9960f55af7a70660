# Two commands do everything: `make study` runs the default scaling study, `make test` the tests.
# Both create .venv on first use. A torch already importable in .venv (a CUDA build, say) is kept.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: study test test-all install clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	@# DeepSpeed JIT-builds its CPU communication op on first use; build it once here, so that
	@# two processes starting together never race to build it.
	$(PY) -c "import os, torch; torch.cuda.is_available() or os.environ.setdefault('DS_ACCELERATOR', 'cpu'); \
	  from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null 2>&1 || true
	touch $(STAMP)

install: $(STAMP)

study: $(STAMP)
	$(VENV)/bin/scaling-study $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
