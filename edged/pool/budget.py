"""The pool's arithmetic: the budget it gets, what a load needs, and the refusals that name it.

Pure functions of numbers (no lock, no slots): ``ModelPool`` calls them under its lock, and
planners that must never choose what the pool would refuse (generation's residency and UNet
parts) read the same constants.
"""

from __future__ import annotations

from edged.config import Settings
from edged.errors import ConfigError
from edged.pool.estimates import Estimate
from edged.schema import format_bytes

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_ESTIMATE",
    "GUESS_FLOOR",
    "LOAD_PEAK_FACTOR",
    "MIN_COST",
    "MIN_PEAK_FACTOR",
    "PEAK_MARGIN",
    "effective_budget",
    "job_busy_message",
    "job_refusal",
    "load_need",
    "load_refusal",
    "model_busy_message",
]

DEFAULT_BUDGET = 1_500_000_000
LOAD_PEAK_FACTOR = 3.5
"""Unknown model: load peak / file size. Measured 3.4x at 10 MB, 2.0-2.5x at 100-400 MB (ONNX)."""
MIN_PEAK_FACTOR = 2.0
"""Lowest load peak / file size seen for ONNX (protobuf bytes + the tensors built from them)."""
MIN_COST = 1_000_000
"""Floor of a measured cost: a delta can read ~0 when freed heap pages are reused."""
PEAK_MARGIN = 0.06
"""Added to a measured peak: one 400 MB model's load peak varied 800-850 MB run to run."""
GUESS_FLOOR = 100_000_000
"""Least reserved for an unmeasured model: small files with big activations peaked at
16-48x their size during warm-up (taef2_decoder 5 MB -> 81 MB, vaelight_decoder 1 MB -> 48 MB)."""
DEFAULT_ESTIMATE = 64_000_000
"""Cost assumed for a model with no measurement and no size hint."""


def effective_budget(settings: Settings, profile_budget: int | None, cgroup_max: int | None) -> int:
    """min(memory_budget or 1.5 GB, the profile's default, cgroup memory.max - memory_reserve)."""
    candidates = [settings.memory_budget or DEFAULT_BUDGET]
    if profile_budget is not None:
        candidates.append(profile_budget)
    if cgroup_max is not None:
        room = cgroup_max - settings.memory_reserve
        if room <= 0:
            raise ConfigError(
                f"memory_reserve ({format_bytes(settings.memory_reserve)}) leaves nothing of the "
                f"cgroup limit ({format_bytes(cgroup_max)}): lower memory_reserve or raise MemoryMax"
            )
        candidates.append(room)
    return min(candidates)


def load_need(known: Estimate | None, estimate: int | None) -> tuple[int, int, str]:
    """(least a load is admitted with, bytes reserved for it, how known).

    A measured peak is trusted (plus PEAK_MARGIN). A guess reserves size x LOAD_PEAK_FACTOR
    but is refused only at size x MIN_PEAK_FACTOR, so the pessimistic factor never refuses a
    model that would have fitted.
    """
    if known is not None:
        least = max(known.peak_bytes, known.resident_bytes)
        return least, int(least * (1 + PEAK_MARGIN)), "measured"
    if estimate:
        least = int(max(estimate, MIN_COST) * MIN_PEAK_FACTOR)
        need = max(int(estimate * LOAD_PEAK_FACTOR), GUESS_FLOOR)
        return least, need, "estimated from its size"
    return MIN_COST, int(DEFAULT_ESTIMATE * LOAD_PEAK_FACTOR), "no estimate"


def load_refusal(
    key: str, need: int, how: str, *, budget: int, pinned: list[str], room: int
) -> str:
    """Why ``key`` can never load: over the budget alone, or beside the pinned models."""
    msg = f"{key} needs {format_bytes(need)} to load ({how}) but the memory budget is {format_bytes(budget)}"
    if need <= budget:
        names = ", ".join(pinned)
        msg += f" and pinned models ({names}) hold {format_bytes(budget - room)}: unpin some (pinned_models) or"
    else:
        msg += ":"
    return f"{msg} raise memory_budget (and the cgroup MemoryMax), or use a smaller/quantized model"


def model_busy_message(key: str, wait_s: float, budget: int, in_use: list[str]) -> str:
    """No room for ``key`` came free within the wait: the budget is held by models in use."""
    return (
        f"no memory for {key} within {wait_s:.1f} s: the budget "
        f"({format_bytes(budget)}) is held by models in use ({', '.join(in_use) or 'none'}); "
        "retry later, run fewer jobs at once, or raise memory_budget / admission_wait_s"
    )


def job_refusal(what: str, nbytes: int, ceiling: int, budget: int) -> str:
    """Why a job's working memory can never fit beside the pinned models and its own."""
    return (
        f"{what} needs {format_bytes(nbytes)} of working memory but at most "
        f"{format_bytes(max(0, ceiling))} of the {format_bytes(budget)} memory budget "
        "can be free beside the pinned models and the job's own model: send a smaller "
        "input, raise memory_budget (and MemoryMax), or unpin models"
    )


def job_busy_message(
    what: str, nbytes: int, *, free: int, budget: int, wait_s: float, held: int
) -> str:
    """A job's working memory did not come free within the wait."""
    return (
        f"{what} needs {format_bytes(nbytes)} of working memory; only "
        f"{format_bytes(free)} of the {format_bytes(budget)} budget came "
        f"free within {wait_s:.1f} s (jobs hold "
        f"{format_bytes(held)}): retry later, run fewer jobs at once, or raise "
        "memory_budget / admission_wait_s"
    )
