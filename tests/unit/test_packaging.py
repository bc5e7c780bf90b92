"""Packaging: the top-level folders install and import as ``modelpool.*``, and imports point one way.

``cluster/``, ``deployments/`` and ``management/`` sit at the top of the checkout (the design card's
layout), but names that plain would collide in a user's environment, so setuptools maps them under
``modelpool`` (pyproject's ``package-dir``). A module imported under both names would exist twice, with
two copies of every class and setting, so nothing may import the bare names.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BARE_NAMES = ("cluster", "deployments", "management")
#: Each layer and the layers it must not import: modelpool (the client, the CLI) -> management -> deployments -> cluster.
FORBIDDEN_ABOVE = {
    "cluster": ("modelpool.deployments", "modelpool.management", "modelpool.client", "modelpool.cli"),
    "deployments": ("modelpool.management", "modelpool.client", "modelpool.cli"),
    "management": ("modelpool.client", "modelpool.cli", "modelpool.remote"),
}


def _configured() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder_of(package: str, package_dir: dict[str, str]) -> Path:
    """The folder a dotted package name maps to, by the longest configured prefix."""
    prefix = max((p for p in package_dir if package == p or package.startswith(p + ".")), key=len)
    rest = package[len(prefix):].lstrip(".")
    return ROOT / package_dir[prefix] / Path(*rest.split(".")) if rest else ROOT / package_dir[prefix]


def _tree_packages() -> set[str]:
    """Every folder of Python files under the mapped folders, as the dotted name it installs under."""
    package_dir = _configured()["package-dir"]
    found = set()
    for name, folder in package_dir.items():
        for sub in [ROOT / folder, *(ROOT / folder).rglob("*")]:
            if sub.is_dir() and sub.name != "__pycache__" and any(sub.glob("*.py")):
                relative = sub.relative_to(ROOT / folder).parts
                found.add(".".join((name, *relative)))
    return found


def _python_files() -> list[Path]:
    # tracked and new (untracked, not ignored) files, as they are in the working tree: a deletion not yet committed is gone
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    return [ROOT / line for line in dict.fromkeys(listed.stdout.split()) if (ROOT / line).exists()]


def _imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) for every absolute import in a file."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.lineno, node.module))
    return names


def test_the_listed_packages_are_the_trees() -> None:
    """A new folder must be added to pyproject's list, or a wheel would ship without it."""
    configured = _configured()
    assert set(configured["packages"]) == _tree_packages()
    for package in configured["packages"]:
        assert _folder_of(package, configured["package-dir"]).is_dir(), package


def test_no_file_imports_a_bare_top_level_name() -> None:
    """Code, tests and load tests import ``modelpool.cluster``, never ``cluster`` (which would load it twice)."""
    bare = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in _python_files()
            for line, name in _imported_names(path) if name.split(".")[0] in BARE_NAMES]
    assert bare == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN_ABOVE))
def test_imports_point_one_way(layer: str) -> None:
    """A lower layer never imports a higher one (the README's Layout)."""
    wrong = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in (ROOT / layer).rglob("*.py")
             for line, name in _imported_names(path)
             if any(name == above or name.startswith(above + ".") for above in FORBIDDEN_ABOVE[layer])]
    assert wrong == []


def test_every_module_imports_under_the_namespace_outside_the_checkout(tmp_path: Path) -> None:
    """From any folder, every module of every package imports, and the bare names do not exist."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"packages = {sorted(_configured()['packages'])!r}\n"
        "modules = []\n"
        "for package in packages:\n"
        "    importlib.import_module(package)\n"
        "    for info in pkgutil.iter_modules(sys.modules[package].__path__, package + '.'):\n"
        "        importlib.import_module(info.name); modules.append(info.name)\n"
        f"bare = sorted(m for m in sys.modules if m.split('.')[0] in {BARE_NAMES!r})\n"
        "try:\n"
        "    import cluster\n"
        "    importable = True\n"
        "except ModuleNotFoundError:\n"
        "    importable = False\n"
        "print(len(modules), bare, importable)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    count, bare, importable = done.stdout.split(" ", 2)
    assert int(count) > 100 and (bare, importable.strip()) == ("[]", "False")
