# One command runs every check: `make test` (ruff, mypy, pytest).
# It bootstraps its own virtual environments and the system tools the tests use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_ARGS ?= --duration 20
SOAK_ARGS ?=

# Every Python pyproject.toml claims (requires-python >= 3.11). $(PYTHON) is the
# main one: lint, types and the ops tests run on it alone; the rest of the suite
# runs on each of the others too, each in its own .venv-X.Y.
PYTHONS ?= 3.11 3.12 3.13
MAIN_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
OTHER_VERSIONS := $(filter-out $(MAIN_VERSION),$(PYTHONS))

# `find_python X.Y` prints a working Python X.Y, or fails. PATH first (a pyenv
# shim counts only if it really runs X.Y: a shim of a version pyenv has not
# selected exits 127), then pyenv's versions folders, newest patch first.
FIND_PYTHON = find_python() { \
	  for c in "$$(command -v python$$1 2>/dev/null)" $$(ls -d \
	      "$$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/$$1.*/bin/python$$1 \
	      "$${PYENV_ROOT:-/nonexistent}"/versions/$$1.*/bin/python$$1 \
	      "$$HOME"/.pyenv/versions/$$1.*/bin/python$$1 \
	      /root/.pyenv/versions/$$1.*/bin/python$$1 2>/dev/null | sort -V -r); do \
	    if [ -n "$$c" ] && [ "$$("$$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$$1" ]; then \
	      echo "$$c"; return 0; \
	    fi; \
	  done; return 1; }

.PHONY: test lint typecheck pytest pytest-versions demo bench bench-smoke bench-versions soak system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench,otel]'
	touch $(STAMP)

venv: $(STAMP)

# Real Prometheus (prometheus, promtool) and docker-compose for the ops tests,
# and a real PostgreSQL server for the usage ledger's tests (they start their
# own cluster in a temp dir). Installed only where missing; no system service
# is left running.
system-deps:
	@missing=""; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v docker-compose >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    for svc in prometheus prometheus-node-exporter postgresql; do \
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

# One venv per other version, rebuilt when pyproject.toml changes (precious:
# make would otherwise delete a stamp it made through a pattern rule).
.PRECIOUS: .venv-%/.installed
.venv-%/.installed: pyproject.toml
	@$(FIND_PYTHON); py=$$(find_python $*) || { echo "Python $* not found" >&2; exit 1; }; \
	echo "$@: $$py"; \
	$$py -m venv .venv-$* && \
	.venv-$*/bin/pip install --quiet --upgrade pip && \
	.venv-$*/bin/pip install --quiet -e '.[test,bench,otel]'
	touch $@

# The suite on one other version; the ops tests (a real Prometheus) ran on the main one.
pytest-%: .venv-%/.installed
	.venv-$*/bin/pytest --ignore=tests/ops

# The suite on every other version the machine has; says which it skipped.
# Under CI=true a missing version fails the run.
pytest-versions:
	@$(FIND_PYTHON); ran="$(MAIN_VERSION) (main: make pytest, with tests/ops)"; skipped=""; failed=""; \
	for v in $(OTHER_VERSIONS); do \
	  if find_python $$v >/dev/null; then \
	    ran="$$ran, $$v"; $(MAKE) --no-print-directory pytest-$$v || failed="$$failed $$v"; \
	  else skipped="$$skipped $$v"; fi; \
	done; \
	echo "pytest on Python $$ran"; \
	if [ -n "$$skipped" ]; then \
	  echo "SKIPPED Python$$skipped: not on PATH nor under pyenv's versions"; \
	  if [ "$$CI" = true ]; then echo "error: CI must test every Python pyproject.toml claims" >&2; exit 1; fi; \
	fi; \
	if [ -n "$$failed" ]; then echo "error: the suite failed on Python$$failed" >&2; exit 1; fi

test: lint typecheck pytest pytest-versions

demo: $(STAMP)
	$(BIN)/meshbridge demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks --smoke

# The unary and streaming workloads under each Python of $(PYTHONS) the machine
# has (its venv made if missing), one after another, at the quick scale (a few
# minutes each); one table to stdout and benchmarks/results/versions.md.
BENCH_VERSIONS_ARGS ?=
bench-versions: $(STAMP)
	@$(FIND_PYTHON); pythons="--python $(BIN)/python"; \
	for v in $(OTHER_VERSIONS); do \
	  if find_python $$v >/dev/null; then \
	    $(MAKE) --no-print-directory .venv-$$v/.installed || exit 1; \
	    pythons="$$pythons --python .venv-$$v/bin/python"; \
	  else echo "SKIPPED Python $$v: not on PATH nor under pyenv's versions"; fi; \
	done; \
	$(BIN)/python -m benchmarks versions $$pythons $(BENCH_VERSIONS_ARGS)

# Tens of thousands of requests ending every way through one Mesh; exits 1 if a
# count differs or anything is left (`make soak SOAK_ARGS=--quick`: seconds).
soak: $(STAMP)
	$(BIN)/python -m benchmarks soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(addprefix .venv-,$(PYTHONS)) .mypy_cache .ruff_cache .pytest_cache
