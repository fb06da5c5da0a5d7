# One command each: make demo | make insights-demo | make test | make lint | make bench | make models
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SECONDS ?= 20

.PHONY: demo insights-demo test test-slow lint bench models install install-dev broker system-deps-slow clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[convert,dev,bench,insights,deploy]'
	# tf-keras gives the fused LSTM path; --no-deps keeps it from pulling in full tensorflow
	$(BIN)/pip install -q --no-deps tf-keras==2.21.0

broker:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
	  (apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients)

demo: install
	$(BIN)/edge-agent demo --seconds $(SECONDS)

# Fleet insights: three real agents, a broker, the collector for about 20 s, then the report.
insights-demo: $(BIN)/python broker
	$(BIN)/pip install -q -e '.[insights]'
	$(BIN)/edge-insights demo --seconds $(SECONDS) --out insights-demo

test: install-dev broker
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# Debian packages only the slow tests need (Java for Spark, Chromium for the HTML report,
# RabbitMQ for the clustered-broker tests). Add yours here.
SLOW_APT := openjdk-17-jre-headless chromium rabbitmq-server

system-deps-slow:
	@missing=""; for p in $(SLOW_APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  [ -z "$$missing" ] || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing)

test-slow: install-dev broker system-deps-slow
	$(BIN)/pip install -q -e '.[spark]'
	$(BIN)/pytest -q -m slow

lint: install-dev
	$(BIN)/ruff check .

models: install-dev
	$(BIN)/python -m converter.reference all --out agent/data

bench: install-dev broker
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
