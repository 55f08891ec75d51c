# Two entry points for a new user: `make demo` and `make test`. Both install what they need.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "Python 3.11 not found as '$(PY)'; run: make PY=/path/to/python3.11 ..."; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Train SASRec (full softmax CE) on MovieLens-1M, evaluate with full ranking, print metrics, save the run.
demo: $(STAMP)
	$(BIN)/userseq train --data ml-1m --config configs/sasrec-ml1m.yaml --out runs/demo-ml1m --max-minutes 8
	$(BIN)/userseq evaluate runs/demo-ml1m
	$(BIN)/userseq recommend runs/demo-ml1m --user 1 -k 10

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/nextitem.py

clean:
	rm -rf $(VENV) runs .pytest_cache
