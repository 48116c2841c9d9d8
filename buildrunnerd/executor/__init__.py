"""The model-backend Protocol and the simulated backend."""

from buildrunnerd.executor._protocol import (
    ApiCall,
    BatchJob,
    ExecutionContext,
    ExecutionOutcome,
    Executor,
)

__all__ = ["ApiCall", "BatchJob", "ExecutionContext", "ExecutionOutcome", "Executor"]
