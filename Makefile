# Two entry points: `make run` (main job, full profile) and `make test` (whole suite).
# Both create .venv on first use and install the pinned requirements (torch 2.13.0 CPU wheel).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROFILE ?= full
export PYTHONUNBUFFERED := 1

.PHONY: install run test smoke bench notebooks clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $(STAMP)

run: install
	$(BIN)/husai pipeline --profile $(PROFILE)

smoke: install
	$(BIN)/husai pipeline --profile smoke

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/sae_step.py
	$(BIN)/python benchmarks/consistency.py

# Re-sync the output-free .ipynb twins from the jupytext .py sources.
notebooks: install
	$(BIN)/jupytext --sync notebooks/[0-9]*.py

clean:
	rm -rf runs .pytest_cache
