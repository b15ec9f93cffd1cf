# Persona: `make run` sets up and runs the main job on ml-100k; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# main job: each base-model training run is capped at 35 s (SASRec reaches ≈ 10 epochs on
# 2 quiet cores; GRU4Rec is time-capped) so that `make run` stays under 10 minutes on a fresh machine
RUN_ARGS ?= train.time_budget_s=35 train.threads=2

.PHONY: install run test lint serve bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/persona run $(RUN_ARGS) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

serve: $(STAMP)  ## device :8000 + cloud :8001 on 127.0.0.1 from `make run`'s ml-100k seed-0 SASRec
	$(BIN)/persona serve --role all --host 127.0.0.1 $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs data/atomic .cache
