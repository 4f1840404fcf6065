"""apsw storage: the only package that touches SQLite.

Its names are loaded when first used (PEP 562), as the runtime's are: a module that needs one
small helper (the disk-full test of ``_worker``) does not import the store and SQLite with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from ._failed import StorageFailed
    from ._schema import SCHEMA_VERSION, SchemaTooNew
    from ._store import DB_FILE, DataDirInUse, Identity, LogDamage, StorageDamaged, Store
    from ._worker import StorageWorker, open_sqlite_storage, open_storage_worker

_WHERE = {
    "SCHEMA_VERSION": "._schema",
    "SchemaTooNew": "._schema",
    "DB_FILE": "._store",
    "DataDirInUse": "._store",
    "Identity": "._store",
    "LogDamage": "._store",
    "StorageDamaged": "._store",
    "StorageFailed": "._failed",
    "Store": "._store",
    "StorageWorker": "._worker",
    "open_sqlite_storage": "._worker",
    "open_storage_worker": "._worker",
}

__all__ = [
    "DB_FILE",
    "SCHEMA_VERSION",
    "DataDirInUse",
    "Identity",
    "LogDamage",
    "SchemaTooNew",
    "StorageDamaged",
    "StorageFailed",
    "StorageWorker",
    "Store",
    "open_sqlite_storage",
    "open_storage_worker",
]


__getattr__, __dir__ = lazy_names(globals(), _WHERE)
