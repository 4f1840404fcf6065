"""The core is sans-IO: it must not import anything that does I/O or reads a clock."""

import ast
import pathlib

import trio_broker._core

FORBIDDEN = {"trio", "apsw", "socket", "time", "asyncio", "threading", "selectors", "os"}
CORE = pathlib.Path(trio_broker._core.__file__).parent


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_modules_import_no_io_or_clock():
    modules = sorted(CORE.rglob("*.py"))
    assert any(p.name == "_raft.py" for p in modules)
    for path in modules:
        bad = imported_roots(path) & FORBIDDEN
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_purity_check_detects_a_forbidden_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os.path\nfrom time import monotonic\n")
    assert imported_roots(sample) & FORBIDDEN == {"os", "time"}
