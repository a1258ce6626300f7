#!/usr/bin/env bash
# The GPU checks in one command, for one lent GPU machine (one H100/H200, no network, no Ray, no vLLM).
#
# Covers (every test of tests/gpu, run with -v, each test's time and the numbers it prints):
#   - the learner on the GPU: a PretrainedLearner built from a checkpoint directory with no device named lands
#     on cuda with its KL reference, takes a bf16 step, saves and resumes (AdamW state and CUDA RNG back on
#     the GPU); bf16 autocast against fp32 gradients (test_learner_cuda.py);
#   - chunked logprobs: the LM head and the logprobs a chunk of tokens at a time against all logits at once
#     (fp32, bf16), and both peaks of GPU memory at Qwen2.5's vocabulary (test_learner_cuda.py);
#   - the torch engine on the GPU: fp32/bf16 logprobs against a full forward, greedy against HF generate,
#     seeded sampling, tokens/s against HF generate (test_engine_cuda.py, benchmarks/gpu_engine.py);
#   - colocated weight sync learner -> engine on one GPU, through host arrays and in place
#     (test_learner_cuda.py);
#   - the FSDP2 learner over NCCL (one rank on one GPU; two with two GPUs): fp32, bf16 mixed precision,
#     gradient checkpointing, DCP checkpoint, resume and export (test_fsdp_cuda.py);
#   - GRPO steps through answerkey.loop.Loop on plain objects (answerkey.local), learner and rollout worker
#     colocated on one GPU, every weight sync verified (test_grpo_cuda.py).
# Does not cover: Ray (the driver, actors, placement groups), vLLM, and the NCCL weight broadcast from the
# learner to rollout workers (rollout/transfer.py): they need packages the machine lacks (ray, vllm).
#
# On the GPU machine, from anywhere:
#   tests/gpu/run.sh                  # OUT=<dir>: also writes summary.txt, pytest.log and junit.xml there
# Rehearsal on a CPU machine (the GPU-only memory test skips):
#   ANSWERKEY_TEST_DEVICE=cpu PYTHON=.venv/bin/python tests/gpu/run.sh
#
# Python and packages. The machine has no network; its `python3` (PYTHON) holds torch with CUDA, and most of
# what this package needs. The script makes a venv (VENV, default /tmp/answerkey-gpu-venv) that sees
# PYTHON's own site-packages (`--system-site-packages`, plus a .pth for when PYTHON is itself a venv's
# python, as on the lent machines: /opt/torch/.venv), so torch comes from the machine; installs every wheel
# in WHEELS (default <repo>/.whl) into it with no index and no dependency resolution; then this package with
# `pip install --no-deps -e .`. The wheels are what the machine lacks or has too old (transformers >= 5.24,
# pydantic, ...; setuptools >= 70.1 to build the editable install without network): fetch them once on a
# machine with the network, for CPython 3.12 (PYVER) on x86-64, at the versions this repository's venv
# (.venv) has:
#   tests/gpu/run.sh --download       # into <repo>/.whl (git-ignored): take it along with the repository
# Time: seconds to set up; the tests are stopped at LIMIT_S (default 540 s), so the whole stays within 10 min.

set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
WHEELS=${WHEELS:-$ROOT/.whl}
# what the lent machines' image lacks (pydantic, httpx2, ...) or holds at versions this package cannot use
# (transformers 5.17: the torch engine needs 5.24's `cache=`; huggingface_hub 1.33, below transformers 5.25's
# floor); the rest of what the tests import is in the machine's image
PACKAGES=(transformers huggingface_hub httpx2 httpcore2 truststore pydantic pydantic_core annotated_types
          typing_inspection typing_extensions regex)

if [[ "${1:-}" == "--download" ]]; then
    pins=$("$ROOT/.venv/bin/python" -c 'import sys, importlib.metadata as m
print(" ".join(f"{p}=={m.version(p)}" for p in sys.argv[1:]))' "${PACKAGES[@]}") || exit 1
    mkdir -p "$WHEELS"  # <repo>/.whl is in .gitignore: the `run` tool carries it only when named in carry
    # shellcheck disable=SC2086
    exec "$ROOT/.venv/bin/python" -m pip download --no-deps --only-binary=:all: \
        --python-version "${PYVER:-3.12}" --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" $pins "setuptools>=70.1"
fi

PYTHON=${PYTHON:-python3}
VENV=${VENV:-/tmp/answerkey-gpu-venv}
LIMIT_S=${LIMIT_S:-540}
LOGS=${OUT:-$(mktemp -d)}
mkdir -p "$LOGS"
start=$(date +%s)

if [[ "${ANSWERKEY_TEST_DEVICE:-cuda}" == "cuda" ]] \
        && ! "$PYTHON" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    echo "run.sh: $PYTHON has no torch that sees a CUDA GPU (set PYTHON, or ANSWERKEY_TEST_DEVICE=cpu)" >&2
    exit 2
fi

# the venv: PYTHON's packages visible (after the venv's own), no pip of its own (PYTHON's is visible)
[[ -f "$VENV/pyvenv.cfg" ]] && rm -rf "$VENV"  # this script's venv of an earlier run
"$PYTHON" -m venv --system-site-packages --without-pip "$VENV" || exit 1
site_dir=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$PYTHON" -c 'import site
print("\n".join(f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()))' \
    > "$site_dir/_base_python.pth"
pip=("$VENV/bin/python" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check)
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if ((${#wheels[@]})); then
    "${pip[@]}" "${wheels[@]}" || exit 1
fi
"${pip[@]}" --no-build-isolation -e "$ROOT" || exit 1
"$VENV/bin/python" - <<'EOF' || exit 1
import importlib.metadata as m
import sys

import torch
import transformers
from packaging.version import Version

import answerkey.local  # noqa: F401  (imports what the tests import)

if Version(transformers.__version__) < Version("5.24"):
    sys.exit(f"run.sh: transformers {transformers.__version__} is too old (>= 5.24: the torch engine's "
             "cache=); put a newer wheel in WHEELS (tests/gpu/run.sh --download, where there is a network)")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"pydantic {m.version('pydantic')}; answerkey from {answerkey.local.__file__}")
EOF
echo "set up in $(($(date +%s) - start)) s"

export PYTHONUNBUFFERED=1
timeout -k 15 "$LIMIT_S" "$VENV/bin/python" -m pytest tests/gpu -v -s -p no:cacheprovider --durations=0 \
    --junitxml "$LOGS/junit.xml" 2>&1 | tee "$LOGS/pytest.log"
rc=${PIPESTATUS[0]}
((rc == 124)) && echo "run.sh: the tests ran past LIMIT_S=$LIMIT_S s and were stopped" \
    | tee -a "$LOGS/pytest.log"

"$VENV/bin/python" - "$LOGS" "$rc" "$(($(date +%s) - start))" <<'EOF' | tee "$LOGS/summary.txt"
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
import transformers

logs, rc, seconds = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
device = os.environ.get("ANSWERKEY_TEST_DEVICE", "cuda")
if device == "cuda" and torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    card = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} GPU(s)"
else:
    card = "cpu (rehearsal)"
print(f"card: {card}\ntorch {torch.__version__} (CUDA {torch.version.cuda}), transformers "
      f"{transformers.__version__}, python {sys.version.split()[0]}")
print(f"pytest exit status {rc}, {seconds} s in all")
log = (logs / "pytest.log").read_text(errors="replace")
junit = logs / "junit.xml"
if junit.exists():
    for case in ET.parse(junit).iter("testcase"):
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        took = float(case.get("time", 0))
        print(f"  {outcome:8} {took:7.1f} s  {case.get('classname')}::{case.get('name')}")
else:  # stopped before pytest wrote it: the outcomes -v printed so far, without times
    test = None
    for m in re.finditer(r"(tests/gpu/\S+::\S+)|\b(PASSED|FAILED|SKIPPED|ERROR)\b", log):
        if m[1]:
            test = m[1]
        elif test:
            print(f"  {m[2].lower():8}            {test}")
            test = None
    if test:
        print(f"  {'stopped':8}            {test}")
print("measured (the [gpu] lines the tests print):")
for line in log.splitlines():
    if "[gpu]" in line:  # less a -v outcome printed on the same line
        print("  " + re.sub(r"(PASSED|FAILED|SKIPPED|ERROR)$", "", line[line.index("[gpu]"):]))
EOF
echo "run.sh: logs in $LOGS"
exit "$rc"
