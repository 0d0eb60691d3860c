"""The import rules lint-imports cannot see, checked on the source: the python-backend models, the
standard-library-only files, and that every Python file outside tests/ is checked by one or the other."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted((ROOT / "model_repository" / "models").glob("*/model.py"))
# Run where nothing but the interpreter is promised: the image's entrypoint, the offline GPU bundle.
STDLIB_ONLY = ("model_repository/supervisor.py", "deploy/gpu_kit.py")
# Of the project, a model.py imports only what the rendered repository ships next to it (runtime/, kernels/):
# nothing else of it is there when Triton loads the model.
PROJECT = {"model_repository", "training", "build", "clients", "benchmarks", "deploy", "tests"}
# Records of one run each, beside the raw files they made (like tests, they may import anything).
UNCHECKED = "benchmarks/results/"


def imported_roots(path: Path) -> dict[str, int]:
    """Top-level package of every import in the file (module level or inside functions) -> its line."""
    roots: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            roots.setdefault(name.split(".")[0], node.lineno)
    return roots


def test_imported_roots_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom a.b import c\ndef g():\n    import torch.nn as nn\n    from . import x\n")
    assert imported_roots(f) == {"os": 1, "a": 2, "torch": 4}


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.parent.name)
def test_model_py_imports_only_what_the_rendered_repository_ships(model):
    roots = imported_roots(model)
    upstream = {r: line for r, line in roots.items() if r in PROJECT}
    assert not upstream, f"{model.relative_to(ROOT)} imports {upstream} (root -> line); of the project a model.py imports runtime and kernels only"
    assert "runtime" in roots  # an adapter: Triton tensors in, a call on the runtime, tensors out
    lines = len(model.read_text(encoding="utf-8").splitlines())
    assert lines < 120, f"{model.relative_to(ROOT)} has {lines} lines; an adapter stays under 120 (STYLE.md)"


@pytest.mark.parametrize("name", STDLIB_ONLY)
def test_standard_library_only(name):
    roots = imported_roots(ROOT / name)
    others = {r: line for r, line in roots.items() if r not in sys.stdlib_module_names}
    assert not others, f"{name} must import the standard library only; it imports {others} (root -> line)"


def test_every_python_file_outside_tests_is_checked():
    """lint-imports sees the root packages' modules; the tests above see model.py and the stdlib-only
    files; what is left is the one gap ARCHITECTURE.md names."""
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["root_packages"]
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()

    def linted(rel: str) -> bool:  # a module lint-imports reaches: inside a root package, an __init__.py in every folder
        parts = Path(rel).parts
        return parts[0] in packages and all((ROOT.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts)))

    checked = {str(m.relative_to(ROOT)) for m in MODELS} | set(STDLIB_ONLY)
    unseen = [f for f in files if not f.startswith("tests/") and not linted(f) and f not in checked and not f.startswith(UNCHECKED)]
    assert not unseen, f"no import rule checks {unseen}: put them in a package lint-imports reaches, or add a rule here"
    assert "benchmarks/results/" in (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")  # the gap is written down
