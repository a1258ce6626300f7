"""The built wheel holds every subpackage of the source tree and the shipped datasets: built with pip,
installed in a scratch venv, each package imported from there (not from this checkout).

The area folders map to `answerkey.*` through `[tool.setuptools] package-dir` (DESIGN.md, "Layout"), and
setuptools only ships the packages listed in `packages`: a new subfolder that is not listed imports fine
from an editable install and is missing from the wheel. The scratch venv borrows this environment's
third-party packages through a `.pth` line (torch and the rest are not reinstalled).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def source_packages() -> dict[str, Path]:
    """{import name: folder} of every package under the folders pyproject maps to `answerkey.*`."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    found = {}
    for name, folder in mapping.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            parts = init.parent.relative_to(ROOT / folder).parts
            if "__pycache__" not in parts:
                found[".".join((name, *parts))] = init.parent
    return found


def test_every_source_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    missing = sorted(set(source_packages()) - listed)
    assert not missing, f"packages missing from pyproject.toml [tool.setuptools] packages: {missing}"


@pytest.mark.slow  # builds and installs a wheel
@pytest.mark.timeout(600)
def test_the_wheel_installs_and_every_package_imports_from_it(tmp_path):
    source = tmp_path / "src"  # a clean copy: setuptools would reuse a stale build/ folder in the checkout
    skip = shutil.ignore_patterns(".*", "build", "runs", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, source, ignore=skip)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)], check=True)
    (wheel,) = (tmp_path / "dist").glob("answerkey-*.whl")
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]  # this environment's, never the checkout
    (Path(site) / "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "-q", str(wheel)], check=True)
    names = sorted(source_packages())
    script = f"import importlib; print('\\n'.join(importlib.import_module(n).__file__ for n in {names!r}))"
    out = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, f"a package does not import from the installed wheel:\n{out.stderr[-2000:]}"
    for name, file in zip(names, out.stdout.split(), strict=True):
        assert Path(file).is_relative_to(site), f"{name} imported from {file}, not from the installed wheel"
    datasets = ("from answerkey.envs import gsm8k, math; "
                "print(len(gsm8k.GSM8KEnv().problems('test')), gsm8k.TEST)")
    out = subprocess.run([python, "-c", datasets], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, f"the shipped datasets do not load from the wheel:\n{out.stderr[-2000:]}"
    rows, path = out.stdout.split()
    assert rows == "1319" and Path(path).is_relative_to(site)
