# Two entry points, each doing all set-up on a fresh machine:
#   make demo   - create .venv, install topo_pai, analyse a pruned ResNet-20
#   make test   - create .venv, install topo_pai with test extras, run the suite
# OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads make torch 5-60x slower on shared cores.
export OMP_WAIT_POLICY := PASSIVE
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench install study study-figures study-resnet20 study-lenet-extra

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and bounded: an unbounded requirement pulls a multi-GB CUDA build on CPU machines.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "torch>=2.2,<2.14"
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/python -m topo_pai.warmup  # compile the numba kernels into their cache once
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python -m topo_pai.demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_core.py

# The Fashion-MNIST replication study (docs/study/REPORT.md). Resumable: rerun to continue.
# `make study FRESH=1` deletes the committed results first and rebuilds everything from scratch.
STUDY_OUT ?= docs/study/results
STUDY_WORKERS ?= 2
study: $(VENV)/.installed
	@if [ -n "$(FRESH)" ]; then rm -rf $(STUDY_OUT); fi
	$(BIN)/topo-pai sweep --config docs/study/study.toml --out $(STUDY_OUT) --workers $(STUDY_WORKERS)
	$(BIN)/python docs/study/analyze.py $(STUDY_OUT)

# The pre-registered studies of docs/study/PLAN.md, each resumable in sittings: the ResNet-20
# grid (~10 core-hours) and the LeNet study's missing arms and weight-scale control (~3).
study-resnet20: $(VENV)/.installed
	$(BIN)/topo-pai sweep --config docs/study/resnet20/study.toml --out docs/study/resnet20/results --workers $(STUDY_WORKERS)

study-lenet-extra: $(VENV)/.installed
	$(BIN)/topo-pai sweep --config docs/study/lenet_extra/study.toml --out docs/study/lenet_extra/results --workers $(STUDY_WORKERS)
	$(BIN)/topo-pai sweep --config docs/study/lenet5_rescale/study.toml --out docs/study/lenet5_rescale/results --workers $(STUDY_WORKERS)

# Redraw the study's figures and tables from the committed results (no training); the
# metric correlations re-prune trials whose measures are not yet in docs/study/metrics/, and
# rewrite metric_tables.md and the generated summary block of docs/study/METRICS.md.
study-figures: $(VENV)/.installed
	$(BIN)/python docs/study/analyze.py $(STUDY_OUT)
	$(BIN)/python docs/study/analyze_plan.py
	$(BIN)/python docs/study/metric_correlations.py
