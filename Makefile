# Two commands on a fresh machine (README, "Quick start on your own machine"):
#   make train   set up .venv, then the main job: train the original network, evaluate it
#   make test    set up .venv, then the tests (the README's test command; .ci/run uses it too)
#   make lab     set up .venv, then open the notebooks in JupyterLab
#   make test-colab   the tests again on Colab's stack (Python 3.13, requirements-colab.txt) in
#                .venv-colab; CI runs it after make test
# The setup step creates .venv with `$(PYTHON) -m venv` and re-runs pip only when
# requirements.txt is newer than .venv/.installed; PYTHON counts only when .venv is created.

PYTHON ?= python3
LAB_ARGS ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VENV_HINT := make: '$(PYTHON) -m venv' is not available. On Debian/Ubuntu: sudo apt-get install python3-venv

.DEFAULT_GOAL := help
# Colab's Python for `make test-colab`: a pyenv 3.13 where there is one, else python3.13 on PATH
PYENV_VERSIONS := $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions
PYTHON_COLAB ?= $(firstword $(wildcard $(PYENV_VERSIONS)/3.13*/bin/python3.13) \
                            $(shell command -v python3.13) python3.13)
COLAB_VENV := .venv-colab
COLAB_STAMP := $(COLAB_VENV)/.installed

.PHONY: help venv train test lab test-colab

help:
	@echo "make train   set up .venv from requirements.txt, train the original network, evaluate checkpoints/original.pt"
	@echo "make test    set up .venv from requirements.txt, run the tests ($(PY) -m pytest; options in pytest.ini)"
	@echo "make lab     set up .venv from requirements.txt, open notebooks/ in JupyterLab"
	@echo "make test-colab   the tests on Colab's stack: Python 3.13 and requirements-colab.txt, in $(COLAB_VENV)"
	@echo "make venv    only the setup step (re-runs pip when requirements.txt is newer than $(STAMP))"
	@echo "Another interpreter (a new .venv): rm -rf $(VENV) && make train PYTHON=python3.12"
	@echo "JupyterLab options: make lab LAB_ARGS=--no-browser"

venv: $(STAMP)

# pip's notices about optional local index folders ("WARNING: Location ...") are noise;
# the log is shown, without them, only when pip fails.
$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found. On Debian/Ubuntu: sudo apt-get install python3 python3-venv"; exit 1; }
	@if [ ! -x $(VENV)/bin/pip ]; then \
	  $(PYTHON) -c "import venv, ensurepip" >/dev/null 2>&1 || { echo "$(VENV_HINT)"; exit 1; }; \
	  echo "== creating $(VENV) ($(PYTHON) -m venv)"; \
	  $(PYTHON) -m venv $(VENV) || { echo "$(VENV_HINT)"; exit 1; }; \
	fi
	@echo "== installing requirements.txt into $(VENV) (the first time takes a few minutes)"
	@$(PY) -m pip install -q -r requirements.txt > $(VENV)/pip-install.log 2>&1 || \
	  { grep -v "^WARNING: Location" $(VENV)/pip-install.log; exit 1; }
	@$(PY) -c "import torch, torchvision, tensorboard, nbval; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| tensorboard', tensorboard.__version__)"
	@touch $(STAMP)

# FMNIST_SMOKE=1 make train: a check of the whole chain in seconds (14 s on a 2-core AMD EPYC, .venv
# already set up); helpers.py train then writes checkpoints/original-smoke.pt, so that is the one
# to evaluate; FMNIST_CHECKPOINTS moves the folder, as it does for helpers.py train
CHECKPOINT_DIR = $(or $(FMNIST_CHECKPOINTS),checkpoints)
# off as in machinery/basics.smoke_mode, which lower-cases first
SMOKE_SUFFIX = $(if $(filter-out 0 false False FALSE no No NO,$(strip $(FMNIST_SMOKE))),-smoke)
BEST = $(CHECKPOINT_DIR)/original$(SMOKE_SUFFIX).pt

train: $(STAMP)
	$(PY) helpers.py train
	$(PY) helpers.py evaluate $(BEST) --json

test: $(STAMP)
	$(PY) -m pytest

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/ $(LAB_ARGS)

$(COLAB_STAMP): requirements.txt requirements-colab.txt
	@command -v $(PYTHON_COLAB) >/dev/null 2>&1 || { echo "make: $(PYTHON_COLAB) not found: give Colab's Python, make test-colab PYTHON_COLAB=/path/to/python3.13"; exit 1; }
	@[ -x $(COLAB_VENV)/bin/pip ] || $(PYTHON_COLAB) -m venv $(COLAB_VENV)
	@echo "== installing requirements-colab.txt into $(COLAB_VENV) (Colab's versions)"
	@$(COLAB_VENV)/bin/python -m pip install -q -r requirements-colab.txt > $(COLAB_VENV)/pip-install.log 2>&1 || \
	  { grep -v "^WARNING: Location" $(COLAB_VENV)/pip-install.log; exit 1; }
	@$(COLAB_VENV)/bin/python -c "import sys, torch, torchvision, tensorboard; print('Python', sys.version.split()[0], '| torch', torch.__version__, '| torchvision', torchvision.__version__, '| tensorboard', tensorboard.__version__)"
	@touch $(COLAB_STAMP)

test-colab: $(COLAB_STAMP)
	$(COLAB_VENV)/bin/python -m pytest
