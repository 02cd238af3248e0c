# Two entry points: `make run` (main job, full profile) and `make test` (whole suite).
# Both create .venv on first use and install the pinned requirements (torch 2.13.0 CPU wheel).
# GPU machines: TORCH=cu130 (e.g. `make run TORCH=cu130`) installs that CUDA build of the pinned
# torch from the PyTorch index first and keeps it; everything else is unchanged.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?=
TORCH_VERSION := $(shell sed -n 's/^torch==//p' requirements.txt)
# The builds of torch 2.13.0 on download.pytorch.org/whl (update with the torch pin).
TORCH_BUILDS  := cpu cu126 cu129 cu130 cu132
$(if $(filter-out $(TORCH_BUILDS),$(TORCH)),$(error TORCH=$(TORCH) is not a build of torch \
  $(TORCH_VERSION); choose one of $(TORCH_BUILDS)))
STAMP  := $(VENV)/.installed$(TORCH:%=-%)
PROFILE ?= full
export PYTHONUNBUFFERED := 1

.PHONY: install run test smoke bench lab notebooks clean release-gate verify

install: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
ifneq ($(TORCH),)
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)+$(TORCH) --index-url https://download.pytorch.org/whl/$(TORCH)
	echo torch==$(TORCH_VERSION)+$(TORCH) > $(VENV)/torch-constraint.txt
endif
	$(BIN)/python -m pip install -q -r requirements.txt $(TORCH:%=-c $(VENV)/torch-constraint.txt)
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $(STAMP)

run: install
	$(BIN)/husai pipeline --profile $(PROFILE)

smoke: install
	$(BIN)/husai pipeline --profile smoke

test: install
	$(BIN)/python -m pytest -q

# The release gate (notebook 14) over the profile's finished runs, then strictly: exit 2 when a
# required gate failed.
release-gate: install
	$(BIN)/husai run 14_release_gate --profile $(PROFILE)
	$(BIN)/husai gate --profile $(PROFILE) --fail-on-gate-fail

# Recompute every headline number of the profile's index and results.json from the artifacts;
# exit 1 with one line per number that no longer follows (`make test` runs it on the smoke runs).
verify: install
	$(BIN)/husai verify --profile $(PROFILE)

bench: install
	$(BIN)/python benchmarks/sae_step.py
	$(BIN)/python benchmarks/consistency.py

# JupyterLab on the notebooks; their `python3` kernel is this venv's python (the server's own
# interpreter; the venv's kernelspec wins over a user-level one), so husai_core and the widgets'
# front-ends come from .venv. Extra options: LAB_ARGS,
# e.g. make lab LAB_ARGS="--no-browser --port 8890".
lab: install
	JUPYTER_PREFER_ENV_PATH=1 $(BIN)/jupyter lab --ServerApp.root_dir=notebooks \
	  $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Re-sync the output-free .ipynb twins from the jupytext .py sources.
notebooks: install
	$(BIN)/jupytext --sync notebooks/[0-9]*.py

clean:
	rm -rf runs .pytest_cache
