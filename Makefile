# One command each: make demo | make test | make lint | make bench | make models
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SECONDS ?= 20

.PHONY: demo test lint bench models install install-dev broker clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[convert,dev,bench]'
	# tf-keras gives the fused LSTM path; --no-deps keeps it from pulling in full tensorflow
	$(BIN)/pip install -q --no-deps tf-keras==2.21.0

broker:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
	  (apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients)

demo: install
	$(BIN)/edge-agent demo --seconds $(SECONDS)

test: install-dev broker
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: install-dev
	$(BIN)/ruff check .

models: install-dev
	$(BIN)/python -m converter.reference all --out agent/data

bench: install-dev broker
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
