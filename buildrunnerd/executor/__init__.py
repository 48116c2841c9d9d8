"""The model-backend Protocol and the simulated backend."""

from buildrunnerd.executor._behind import InOrderContext, WritesBehind
from buildrunnerd.executor._checkpoints import RecentCheckpoints
from buildrunnerd.executor._protocol import (
    ApiCall,
    BatchJob,
    ExecutionContext,
    ExecutionOutcome,
    Executor,
    TurnEvent,
)
from buildrunnerd.executor._simulated import SimulatedExecutor

__all__ = [
    "ApiCall", "BatchJob", "ExecutionContext", "ExecutionOutcome", "Executor", "InOrderContext",
    "RecentCheckpoints", "SimulatedExecutor", "TurnEvent", "WritesBehind",
]
