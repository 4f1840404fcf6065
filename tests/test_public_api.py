"""The public API: everything a user meets is exported from trio_broker and documented, and
every wire error code has its exception class."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import trio_broker
import trio_broker.sync
from trio_broker._errors import ERROR_CLASSES, BrokerError, ErrorCode, error_from_wire


def test_every_exported_name_has_a_docstring():
    undocumented = [
        name
        for name in trio_broker.__all__
        if not inspect.getdoc(getattr(trio_broker, name))
        or inspect.getdoc(getattr(trio_broker, name)) == inspect.getdoc(object)
    ]
    assert undocumented == []


def test_the_package_is_marked_typed():
    assert (Path(trio_broker.__file__).parent / "py.typed").is_file()


def _public_types_in(annotation: object) -> set[type]:
    found: set[type] = set()
    stack = [annotation]
    while stack:
        item = stack.pop()
        stack.extend(typing.get_args(item))
        origin = typing.get_origin(item)
        if isinstance(item, type) and item.__module__.startswith("trio_broker"):
            found.add(item)
        if isinstance(origin, type) and origin.__module__.startswith("trio_broker"):
            found.add(origin)
    return found


@pytest.mark.parametrize("cls", [trio_broker.Client, trio_broker.Producer, trio_broker.sync.Client])
def test_every_type_in_a_client_signature_is_exported(cls):
    exported = {getattr(trio_broker, name) for name in trio_broker.__all__} | {
        getattr(trio_broker.sync, name) for name in trio_broker.sync.__all__
    }
    seen: set[type] = set()
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or not callable(member):
            continue
        for annotation in typing.get_type_hints(member).values():
            seen |= _public_types_in(annotation)
    assert seen - exported == set()
    if cls is not trio_broker.Producer:
        assert {trio_broker.Message, trio_broker.QueueList, trio_broker.Topology} <= seen


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_has_its_class(code):
    cls = ERROR_CLASSES[code]
    assert code == cls.CODE
    assert cls.__name__ in trio_broker.__all__
    error = error_from_wire({"status": "error", "code": str(code), "message": "m", "x": 1})
    assert type(error) is cls
    assert (error.code, error.message, error.details) == (code, "m", {"x": 1})
    assert isinstance(error, BrokerError)


def test_an_unknown_outcome_and_an_unknown_code():
    unknown = error_from_wire(
        {"status": "error", "code": "UNAVAILABLE", "message": "m", "outcome": "unknown"}
    )
    assert type(unknown) is trio_broker.OutcomeUnknownError
    assert isinstance(unknown, trio_broker.UnavailableError)
    future = error_from_wire({"status": "error", "code": "FROM_THE_FUTURE", "message": "m"})
    assert type(future) is BrokerError
    assert isinstance(trio_broker.BrokerUnreachableError([]), trio_broker.UnavailableError)


_BROKER_MODULES = (
    "trio_broker._runtime._broker",
    "trio_broker._storage._store",
    "prometheus_client",
)


def _modules_after(code: str) -> set[str]:
    """The broker's heavy modules a fresh interpreter holds after ``code``."""
    probe = (
        "import sys\n" + code + "\nprint(' '.join(m for m in sys.modules if m in "
        f"{_BROKER_MODULES!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(out.stdout.split())


def test_a_client_program_and_the_client_commands_do_not_import_the_broker():
    """The broker's names are loaded when first used (PEP 562): a client program, and every
    command-line client command (whose parser builds every command's parser), skip the broker,
    its storage and its metrics, about half of ``import trio_broker``'s time."""
    assert _modules_after("import trio_broker, trio_broker.sync, trio_broker.client") == set()
    assert (
        _modules_after(
            "from trio_broker._cli._main import main\n"
            "assert main(['client', '--seed', '127.0.0.1:9', '--timeout', '0.2', 'queues']) == 2"
        )
        == set()
    )
    # ... and the names are all there when used.
    assert _modules_after("from trio_broker import open_broker, DataDirInUse") == {
        "trio_broker._runtime._broker",
        "trio_broker._storage._store",
        "prometheus_client",
    }


def test_the_lazy_names_are_the_modules_own():
    import trio_broker._runtime as runtime
    import trio_broker._storage as storage
    from trio_broker._runtime._open import open_broker
    from trio_broker._storage._store import DataDirInUse

    assert trio_broker.open_broker is open_broker and runtime.open_broker is open_broker
    assert trio_broker.DataDirInUse is DataDirInUse and storage.DataDirInUse is DataDirInUse
    for module in (trio_broker, runtime, storage):
        assert set(module.__all__) <= set(dir(module))
        assert all(getattr(module, name) is not None for name in module.__all__)
        with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
            module.not_a_name  # noqa: B018
