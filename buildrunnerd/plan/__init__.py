"""Planning: a parsed spec becomes tasks, a dependency graph, batches and prompt sizes."""

from buildrunnerd.plan._batch import make_batches
from buildrunnerd.plan._build import build_plan, validate_tasks
from buildrunnerd.plan._dag import (
    critical_path,
    find_cycle,
    levels,
    longest_tails,
    ready_set,
    topo_order,
)
from buildrunnerd.plan._decompose import ESTIMATE_MINUTES, HeuristicPlanner, Planner
from buildrunnerd.plan._model import (
    Batch,
    BatchPrompt,
    CriticalPath,
    Plan,
    PlanFeature,
    PlanWarning,
    Task,
)

__all__ = [
    "ESTIMATE_MINUTES",
    "Batch",
    "BatchPrompt",
    "CriticalPath",
    "HeuristicPlanner",
    "Plan",
    "PlanFeature",
    "PlanWarning",
    "Planner",
    "Task",
    "build_plan",
    "critical_path",
    "find_cycle",
    "levels",
    "longest_tails",
    "make_batches",
    "ready_set",
    "topo_order",
    "validate_tasks",
]
