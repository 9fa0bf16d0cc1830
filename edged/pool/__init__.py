"""The byte budget: the model pool, its measured cost table, and job working-memory reservations."""

from edged.pool.model_pool import ModelPool, effective_budget

__all__ = ["ModelPool", "effective_budget"]
