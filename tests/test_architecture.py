"""ARCHITECTURE.md's tables match the tree: every module is in a table, every module a table names exists."""

import re

from tests.conftest import REPO

PACKAGES = ("fruits_assets", "spark_code")


def _modules(packages: bool = False) -> set[str]:
    """Every module of the two packages, as a path inside its package (`deploy/emr/batch.py`); `__init__.py` files
    too when `packages`."""
    return {
        str(path.relative_to(REPO / package))
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if packages or path.name != "__init__.py"
    }


def _same(module: str, name: str) -> bool:
    """Whether a table's name (`emr/batch.py`, `batch.py`, `spark_code/unchanged.py`) is that module."""
    return module.endswith(name) or name.endswith(module)


def _named() -> set[str]:
    """The `*.py` names of the first column of ARCHITECTURE.md's tables, and its section titles."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    cells = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    titles = [line for line in text.splitlines() if line.startswith("## ")]
    return {name for cell in cells + titles for name in re.findall(r"`?([\w/]+\.py)`?", cell)}


def test_every_module_is_in_a_table():
    named = _named()
    assert sorted(m for m in _modules() if not any(_same(m, name) for name in named)) == []


def test_every_module_a_table_names_exists():
    modules = _modules(packages=True)
    assert sorted(n for n in _named() if not any(_same(m, n) for m in modules)) == []
