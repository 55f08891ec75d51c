# Two entry points for a new user: `make demo` and `make test`. Both install what they need.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint bench bench-list bench-serve chromium serve-demo clean

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

# Headless Chromium for the web-page test (Debian packages; only installed when missing, and only
# where apt-get can run as root). Without it tests/test_web.py is skipped with the reason.
chromium:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium + chromium-driver (Debian) for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
			>/dev/null 2>&1 || echo "warning: could not install chromium; the browser test will be skipped"; \
	else echo "note: chromium/chromium-driver not installed; the browser test will be skipped"; fi

test: $(STAMP) chromium
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# Every benchmark row group, one at a time (under quiet-run when it exists); the total estimate
# is printed first. `make bench ROWS=classical,tune` runs a subset; `make bench-list` lists them.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py run $(if $(ROWS),--rows $(ROWS))

bench-list:
	@$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY)) benchmarks/bench.py list $(if $(ROWS),--rows $(ROWS))

# ANN recall/latency (1M synthetic items + ML-1M) and HTTP load (ML-1M); needs runs/demo-ml1m or --run
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/ann.py
	$(BIN)/python benchmarks/serve_load.py

# Index the demo run and serve it with the web page on http://127.0.0.1:8000/
serve-demo: $(STAMP)
	$(BIN)/userseq index runs/demo-ml1m
	$(BIN)/userseq serve runs/demo-ml1m

clean:
	rm -rf $(VENV) runs .pytest_cache
