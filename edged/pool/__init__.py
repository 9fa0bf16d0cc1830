"""The byte budget: the model pool, its measured cost table, and job working-memory reservations."""

from edged.pool.budget import effective_budget
from edged.pool.model_pool import ModelPool

__all__ = ["ModelPool", "effective_budget"]
