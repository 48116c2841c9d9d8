"""The SQLite store: runs, tasks, batches, attempts, events, API calls and their costs.

One :class:`Store` per daemon. Every state change and its event are written in one transaction;
stored events reach the daemon's event bus through ``on_event`` after the commit.
"""

from buildrunnerd.store._costs import COST_GROUPINGS
from buildrunnerd.store._db import StatementCounts
from buildrunnerd.store._migrations import LATEST_VERSION, MIGRATIONS
from buildrunnerd.store._records import (
    ATTEMPT_OUTCOMES,
    AttemptEnd,
    AttemptRecord,
    BatchChange,
    BatchRecord,
    EventData,
    JsonData,
    NewEvent,
    NewRun,
    RunChange,
    RunOptions,
    RunRecord,
    RunSpec,
    RunUpdate,
    TaskChange,
    TaskRecord,
    format_ts,
    global_id,
    parse_ts,
)
from buildrunnerd.store._store import Store

__all__ = [
    "ATTEMPT_OUTCOMES", "AttemptEnd", "AttemptRecord", "BatchChange", "BatchRecord",
    "COST_GROUPINGS", "EventData", "JsonData", "LATEST_VERSION", "MIGRATIONS", "NewEvent",
    "NewRun", "RunChange", "RunOptions", "RunRecord", "RunSpec", "RunUpdate", "StatementCounts",
    "Store", "TaskChange", "TaskRecord", "format_ts", "global_id", "parse_ts",
]
