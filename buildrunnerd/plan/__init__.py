"""Planning: a parsed spec becomes tasks, a dependency graph and batches.

The planner knows nothing of prompts: ``build_plan`` takes a :data:`BatchSizer` callback to
size each batch's prompt (``buildrunnerd.prompt.plan_with_prompts`` passes the prompt
builder's), so this package never imports the prompt layer above it.
"""

from buildrunnerd.plan._batch import make_batches
from buildrunnerd.plan._build import BatchSizer, build_plan, validate_tasks
from buildrunnerd.plan._dag import (
    critical_path,
    find_cycle,
    levels,
    longest_tails,
    ready_set,
    topo_order,
)
from buildrunnerd.plan._decompose import ESTIMATE_MINUTES, HeuristicPlanner, Planner
from buildrunnerd.plan._files import hold_files_to_spec
from buildrunnerd.plan._language import Stack, detect_stack
from buildrunnerd.plan._model import (
    Batch,
    CriticalPath,
    Plan,
    PlanFeature,
    PlanWarning,
    Task,
)

__all__ = [
    "Batch", "BatchSizer", "CriticalPath", "ESTIMATE_MINUTES", "HeuristicPlanner", "Plan",
    "PlanFeature", "PlanWarning", "Planner", "Stack", "Task", "build_plan", "critical_path",
    "detect_stack", "find_cycle", "hold_files_to_spec", "levels", "longest_tails",
    "make_batches", "ready_set", "topo_order", "validate_tasks",
]
