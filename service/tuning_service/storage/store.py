"""The service's storage: one SQLite file (db.py: connections, DDL, the one transaction helper), and every
statement the service runs, by table: jobs.py, records.py, files.py, keys.py, webhooks.py, metrics.py,
models.py.

Reads are single statements; anything that reads and then writes runs inside `transaction()` (BEGIN IMMEDIATE)
and checks the rowcount of its conditional UPDATE, so claims stay atomic across worker processes.
"""

from __future__ import annotations

from .db import Database, Tx
from .files import FileTables
from .jobs import JobTables, Stamp, new_job_id
from .keys import KeyTables
from .metrics import MetricsReads
from .models import ModelTables
from .records import RecordTables
from .usage import UsageTables
from .webhooks import WebhookTables


class Store(
    JobTables,
    RecordTables,
    FileTables,
    KeyTables,
    WebhookTables,
    MetricsReads,
    ModelTables,
    UsageTables,
    Database,
):
    """All of the tables, over one database."""


__all__ = ["Database", "Stamp", "Store", "Tx", "new_job_id"]
