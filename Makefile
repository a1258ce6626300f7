# The two commands: `make test` and `make demo` (and `make check`, the fast suite to iterate with). Each creates
# .venv if missing, installs torch first (the CPU wheel: an unpinned torch would pull a multi-GB CUDA build), then
# the project, then runs.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the tests need (installed via apt when running as root; later issues add theirs).
APT_PACKAGES ?= bubblewrap util-linux

.PHONY: test check test-cluster demo install lint clean

$(STAMP): pyproject.toml Makefile
	@if [ -n "$(APT_PACKAGES)" ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The full suite CI runs: the linter, every test, then tests/cluster. pytest's exit 5 ("no tests collected") is a
# failure, not a pass. tests/cluster (a real `ray start --head` + `answerkey submit`) runs after the main suite, so
# it cannot take down the suite's own Ray.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; rc=1; fi; \
	$(PY) -m pytest -q tests/cluster; rc2=$$?; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; exit $$rc2

# The fast suite to iterate with: the linter and the unit tests (no Ray, no training, no process pools; the
# `slow` and `ray` markers in tests/ say which are left out).
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow and not ray and not gpu" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make check: pytest collected no tests" >&2; rc=1; fi; exit $$rc

test-cluster: $(STAMP)
	$(PY) -m pytest -q tests/cluster

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(PY) -m answerkey.demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
