# One command runs every check: `make test` (ruff, mypy, pytest).
# It bootstraps its own virtual environment and the system tools the tests use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_ARGS ?= --duration 20

.PHONY: test lint typecheck pytest demo bench bench-smoke system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

# Real Prometheus (prometheus, promtool) and docker-compose for the ops tests.
# Installed only where missing; no system service is left running.
system-deps:
	@missing=""; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v docker-compose >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    for svc in prometheus prometheus-node-exporter; do \
	      (command -v systemctl >/dev/null 2>&1 && systemctl stop $$svc) >/dev/null 2>&1 || true; \
	      (command -v service >/dev/null 2>&1 && service $$svc stop) >/dev/null 2>&1 || true; \
	    done; \
	  else echo "warning: cannot install$$missing (not root or no apt-get); their tests skip outside CI"; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-deps
	$(BIN)/pytest

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/meshbridge demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks --smoke

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
