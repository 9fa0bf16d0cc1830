"""Super-resolution job memory: what one upscale allocates, tiles sized from what is free,
and the reservation taken in the engine's budget before it runs (docs/memory.md).

A job holds, besides the model, its buffers (decoded input, colour/float planes, the float
output and the uint8 result: ``IN_BYTES``/``OUT_BYTES`` per pixel, counted from
``superres._upscale_y``/``_upscale_rgb``) and one model run's working memory at a time. That
per-pixel cost is measured on the model's first large enough run (``measure_first``) and
kept in the pool's estimate table; until then the catalogue's ``activation_bytes_per_px`` or
a conservative family default is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

from edged.errors import MemoryBudgetExceeded, TooLarge
from edged.pool.jobs import PER_PX_MARGIN, measure_first
from edged.schema import format_bytes
from edged.tasks import tiling

if TYPE_CHECKING:
    from edged.engine import Engine
    from edged.models.loader import LoadedModel
    from edged.tasks.superres import Layout

__all__ = ["DEFAULT_BYTES_PER_PX", "metered", "plan", "reserved"]

DEFAULT_BYTES_PER_PX = {"sr-y": 64 * 4 * 3, "sr-rgb": 64 * 4 * 4}
"""Unmeasured model: ~3 (sr-y) / 4 (sr-rgb) live 64-channel float32 maps per input pixel
(ESPCN x4 measured 375 B/px untiled: the default is on the safe side)."""
IN_BYTES = {"sr-y": 3 + 3 + 4, "sr-rgb": 3 + 12}
"""Per input pixel: decoded RGB, then YCrCb + float Y (sr-y) or float RGB (sr-rgb)."""
OUT_BYTES = {"sr-y": 6, "sr-rgb": 12 + 3}
"""Per output pixel at the post-processing peak: sr-y's float Y is freed before chroma
(max of 4+1, 1+2+3, 3+3); sr-rgb holds the float output and the uint8 result together."""
ACTIVATION_SHARE = 0.25
"""Most of the budget one run's working memory may take, so other jobs still fit beside it."""
DEFAULT_BUDGET = 1_500_000_000
DEFAULT_MAX_RUNS = 4096


def _key(loaded: LoadedModel) -> str:
    return f"{loaded.entry.name}@{loaded.backend}"


def per_px(engine: Engine | None, loaded: LoadedModel, layout: Layout) -> int:
    """Working bytes of one run per input pixel: measured (+ margin), declared or default."""
    measured = engine.pool.estimates.activation(_key(loaded)) if engine is not None else None
    if measured:
        return int(measured * PER_PX_MARGIN)
    declared = loaded.entry.params.get("activation_bytes_per_px")
    base = declared if isinstance(declared, int) and declared > 0 else None
    base = base or DEFAULT_BYTES_PER_PX.get(loaded.entry.family, DEFAULT_BYTES_PER_PX["sr-rgb"])
    # + the float input window and the float output of the run
    return base + layout.channels * 4 * (1 + layout.scale**2)


def plan(
    engine: Engine | None,
    loaded: LoadedModel,
    layout: Layout,
    *,
    size: tuple[int, int],
    cap: int,
    halo: int,
) -> tuple[tiling.JobPlan, str, int]:
    """(tiles, what the reservation is called, bytes to reserve) for one upscale.

    Output above ``max_output_pixels`` is ``TooLarge``; more runs than ``max_model_runs``
    is ``BadRequest`` (``tiling.plan_job``); both name the numbers.
    """
    height, width = size
    if layout.fixed is not None:  # run_tiled pads smaller images up to the model input
        height, width = max(height, layout.fixed[0]), max(width, layout.fixed[1])
    scale, family = layout.scale, loaded.entry.family
    out_px = height * width * scale * scale
    settings = engine.settings if engine is not None else None
    max_out = settings.max_output_pixels if settings is not None else None
    if max_out is not None and out_px > max_out:
        raise TooLarge(
            f"superres x{scale} of {width}x{height} makes {width * scale}x{height * scale} = "
            f"{out_px / 1e6:.1f} MP; at most {max_out / 1e6:.1f} MP per job "
            "(max_output_pixels): send a smaller image or raise max_output_pixels"
        )
    buffers = height * width * IN_BYTES.get(family, 15) + out_px * OUT_BYTES.get(family, 15)
    unit = per_px(engine, loaded, layout)
    side = layout.fixed or (2 * halo + tiling.MIN_TILE,) * 2
    least = buffers + min(side[0], height) * min(side[1], width) * unit
    if engine is not None:
        now, ever = engine.job_room()
        if least > ever:  # refused before planning runs: memory, not the tile, is the limit
            raise MemoryBudgetExceeded(
                f"superres {loaded.entry.name} x{scale} of {width}x{height} needs at least "
                f"{format_bytes(least)} of working memory ({format_bytes(buffers)} of image "
                f"buffers) but at most {format_bytes(ever)} of the "
                f"{format_bytes(engine.pool.budget)} memory budget can be free beside the "
                "pinned models and its own model: send a smaller image or raise memory_budget"
            )
        # Size from what is free now; if that is not even one small tile, from what this
        # job can get after a (bounded) wait for other jobs.
        free = now if now >= least else ever
        share = int(engine.pool.budget * ACTIVATION_SHARE)
    else:
        free = share = int(DEFAULT_BUDGET * ACTIVATION_SHARE)
    job = tiling.plan_job(
        height,
        width,
        halo=halo,
        per_px=unit,
        room=max(0, min(free - buffers, share)),
        cap=cap,
        fixed=layout.fixed,
        max_runs=settings.max_model_runs if settings is not None else DEFAULT_MAX_RUNS,
    )
    what = (
        f"superres {loaded.entry.name} x{scale} of {width}x{height} "
        f"({job.tiles} tile(s) of {job.tile[1]}x{job.tile[0]})"
    )
    return job, what, buffers + job.run_bytes


def metered(engine: Engine | None, loaded: LoadedModel, fn: tiling.TileFn) -> tiling.TileFn:
    """``fn`` that measures the model's per-pixel cost on its first large enough run."""
    if engine is None:
        return fn
    key, table = _key(loaded), engine.pool.estimates
    return measure_first(fn, lambda bytes_per_px: table.observe_activation(key, bytes_per_px))


@contextmanager
def reserved(engine: Engine | None, what: str, nbytes: int) -> Iterator[None]:
    """The job's bytes held in the engine's budget for the block (nothing without one)."""
    with engine.reserve(what, nbytes) if engine is not None else nullcontext(0):
        yield
