"""Benchmark suites behind ``edged bench``: one module per suite, each with ``register(sub)``.

Suites measure; tests never time anything. A suite prints a markdown table, or one JSON
object with ``--json``, and exits non-zero when its stated goal is not met.
"""
