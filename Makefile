# One command runs every check: `make test` (ruff, mypy, the docs, every
# test on every Python, coverage floors). `make check` is the fast loop: lint,
# types and the fast tier (no subprocesses, no real servers), in under a minute.
# Both bootstrap their own virtual environments; `make test` also installs the
# system tools its integration tests use, where they are missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_ARGS ?= --duration 20 --admin-listen 127.0.0.1:0
SOAK_ARGS ?=
# Extra arguments for pytest: `make check ARGS="-k pipe -x"`, `make pytest ARGS=...`.
ARGS ?=
# pytest-xdist workers: two (this machine's cores) for the whole suites, none for
# the fast tier (its collection, once per worker, costs what two workers save).
# The tests marked `wallclock` assert a real-time bound (serve's grace period
# once, not twice) that a busy neighbour stretches: they run after the others,
# in one process, alone. JOBS=0: every test in one process, in one go (--pdb).
JOBS ?=
# What every venv installs: the package (editable, with its user extras) and
# the pinned development tools of pyproject.toml's [dependency-groups].
INSTALL := -e '.[otel]' --group dev
# uv installs them, from PyPI as pip would: a venv in about 20 s where pip took
# 55-85 s, and the other Pythons' venvs share its cache. Compiled to bytecode at
# install, as pip does (a first import compiling inside a test's timeout failed
# one). pip bootstraps uv into the main venv, and stays in every venv (for
# tests/test_packaging.py).
UV_VERSION ?= 0.13.9
UV := $(BIN)/uv
# Where uv cannot install (it reads neither pip's configuration nor its
# index settings), pip does, as before.
install_into = { $(UV) pip install --quiet --compile-bytecode --python $(1)/bin/python --upgrade-package pip pip $(INSTALL) || \
	{ echo "uv could not install into $(1): pip installs it" >&2; \
	  $(1)/bin/pip install --quiet --upgrade pip && $(1)/bin/pip install --quiet $(INSTALL); }; }

# $(call run_tests,PYTEST COMMAND,MARKER EXPRESSION or empty,DEFAULT JOBS): the
# selected tests but the wallclock ones in $(JOBS) xdist workers, then the
# wallclock ones in one process; no test selected in one of the two runs (exit 5)
# is no failure.
wallclock_and = $(if $(2),($(2)) and )
jobs = $(or $(JOBS),$(3))
run_tests = $(if $(filter 0,$(jobs)),$(1) -p no:xdist $(if $(2),-m '$(2)') $(ARGS),\
	a=0; $(1) -n $(jobs) --dist loadgroup -m '$(wallclock_and)not wallclock' $(ARGS) || a=$$?; \
	echo "the tests marked wallclock, alone:"; \
	b=0; $(1) -p no:xdist -m '$(wallclock_and)wallclock' $(ARGS) || b=$$?; \
	for rc in $$a $$b; do [ $$rc = 0 ] || [ $$rc = 5 ] || exit $$rc; done; \
	[ $$a = 0 ] || [ $$b = 0 ] || exit 5)
# Coverage floors (lines), enforced by `make pytest` (see [tool.coverage.*]); the core
# measures 96.3% today, everything 90.5%:
# the core modules (meshbridge/*.py) and everything measured.
COVER_CORE ?= 95
COVER_ALL ?= 88

# Every Python pyproject.toml claims (requires-python >= 3.11). $(PYTHON) is the
# main one: lint, types, the ops tests and the benchmark smoke tests run on it
# alone; the rest of the suite runs on each of the others too, each in its own
# .venv-X.Y.
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

.PHONY: test check lint typecheck pytest pytest-fast pytest-versions venvs-versions coverage docs demo admin-screenshot bench bench-smoke bench-versions soak system-deps venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION) || echo "uv could not be installed: pip installs the venvs" >&2
	$(call install_into,$(VENV))
	touch $(STAMP)

venv: $(STAMP)

# Real Prometheus (prometheus, promtool) and docker-compose for the ops tests,
# and redis-server for the shared limit store's tests (started by the tests
# themselves, on free ports), and a real PostgreSQL server for the usage
# ledger's tests (they start their own cluster in a temp dir), and Chromium
# for the admin page's browser tests (Playwright drives it through its
# executable path; no browser is downloaded). Installed only
# where missing, saying what and why; no system service is left running.
# Nothing is installed when everything is there.
system-deps:
	@missing=""; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v docker-compose >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "system-deps: installing Debian packages$$missing (promtool and a real Prometheus, docker-compose: tests/ops; chromium: tests/browser)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    for svc in prometheus prometheus-node-exporter redis-server postgresql; do \
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

# The fast tier: pure and in-process tests (core, providers, testing, service
# in-process); no subprocess, no real server, no wheel build.
check: lint typecheck pytest-fast

pytest-fast: $(STAMP)
	$(call run_tests,$(BIN)/pytest,not integration,0)

# Everything, on the main Python, measuring coverage; then the floors.
# (The pytest script, not `-m pytest`: that would put the repository first on
# sys.path, and pytest would then rewrite meshbridge's own modules.)
pytest: $(STAMP) system-deps
	rm -f .coverage .coverage.*
	$(call run_tests,COVERAGE_FILE=$(CURDIR)/.coverage $(BIN)/coverage run $(BIN)/pytest,,2)
	@$(MAKE) --no-print-directory coverage

# The figures of the last `make pytest`, and the floors (exit 1 below one).
CORE_FILES := --include='$(CURDIR)/meshbridge/_*.py,$(CURDIR)/meshbridge/__init__.py'
coverage: $(STAMP)
	@$(BIN)/coverage combine -q 2>/dev/null || true
	@core=$$($(BIN)/coverage report $(CORE_FILES) --format=total); \
	all=$$($(BIN)/coverage report --format=total); \
	echo "coverage (lines): core $$core% (floor $(COVER_CORE)%), everything $$all% (floor $(COVER_ALL)%)"; \
	$(BIN)/coverage report $(CORE_FILES) --fail-under=$(COVER_CORE) >/dev/null || \
	  { $(BIN)/coverage report $(CORE_FILES) --skip-covered; echo "error: core coverage below $(COVER_CORE)%" >&2; exit 1; }; \
	$(BIN)/coverage report --fail-under=$(COVER_ALL) >/dev/null || \
	  { $(BIN)/coverage report --skip-covered; echo "error: coverage below $(COVER_ALL)%" >&2; exit 1; }

# The documentation site, strictly (a broken link or reference fails); site/.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# One venv per other version, rebuilt when pyproject.toml changes (precious:
# make would otherwise delete a stamp it made through a pattern rule); the main
# venv's uv installs it.
.PRECIOUS: .venv-%/.installed
.venv-%/.installed: pyproject.toml | $(STAMP)
	@$(FIND_PYTHON); py=$$(find_python $*) || { echo "Python $* not found" >&2; exit 1; }; \
	echo "$@: $$py"; \
	$$py -m venv .venv-$* && \
	$(call install_into,.venv-$*)
	touch $@

# The venvs of the other versions the machine has (pytest-versions says which
# it skipped), built side by side.
venvs-versions: $(STAMP)
	@$(FIND_PYTHON); stamps=""; \
	for v in $(OTHER_VERSIONS); do find_python $$v >/dev/null && stamps="$$stamps .venv-$$v/.installed"; done; \
	[ -z "$$stamps" ] || $(MAKE) --no-print-directory $$stamps

# The suite on one other version, both tiers; the ops tests (a real Prometheus
# checking the dashboards, rules and manifests: files, not Python) and the
# benchmark smoke tests (about 100 s; their version table already runs the
# benchmarks on every Python) ran on the main one.
pytest-%: .venv-%/.installed
	$(call run_tests,.venv-$*/bin/pytest --ignore=tests/ops --ignore=tests/test_benchmarks_smoke.py,,2)

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

# Lint, types, the docs, the system tools and the other Pythons' venvs side by
# side (each one's output in one piece); then the suites, one Python after another.
test:
	@$(MAKE) --no-print-directory -j3 --output-sync=target lint typecheck docs system-deps venvs-versions
	@$(MAKE) --no-print-directory pytest
	@$(MAKE) --no-print-directory pytest-versions

demo: $(STAMP)
	$(BIN)/meshbridge demo $(DEMO_ARGS)

# The admin page during the demo's outage, for the docs (docs/images/admin.png):
# the demo, Debian's Chromium driven by Playwright, one picture.
admin-screenshot: $(STAMP)
	$(BIN)/python -m tests.browser.screenshot_demo docs/images/admin.png

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
	rm -rf $(VENV) $(addprefix .venv-,$(PYTHONS)) .mypy_cache .ruff_cache .pytest_cache site .coverage .coverage.*
