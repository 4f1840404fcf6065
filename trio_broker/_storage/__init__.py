"""apsw storage: the only package that touches SQLite."""

from ._schema import SCHEMA_VERSION, SchemaTooNew
from ._store import DB_FILE, DataDirInUse, Identity, LogDamage, StorageDamaged, Store
from ._worker import StorageWorker, open_sqlite_storage, open_storage_worker

__all__ = [
    "DB_FILE",
    "SCHEMA_VERSION",
    "DataDirInUse",
    "Identity",
    "LogDamage",
    "SchemaTooNew",
    "StorageDamaged",
    "StorageWorker",
    "Store",
    "open_sqlite_storage",
    "open_storage_worker",
]
