"""The headline rows of ``edged bench all``: one line per figure, its baseline and the ratio.

Each function reads one suite's JSON (as its ``--json`` prints it) and tolerates missing
keys: a suite that failed or changed shape yields fewer rows, never a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edged.bench.common import fmt_ratio, ratio
from edged.schema import format_bytes

Row = list[Any]


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f} ms"


def _goal(suite: dict[str, Any], prefix: str) -> str:
    for g in suite.get("goals") or []:
        if str(g.get("goal", "")).startswith(prefix):
            met = g.get("met")
            return "unmeasured" if met is None else "met" if met else "NOT met"
    return ""


def latency_rows(s: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for r in s.get("rows", []):
        raw = r.get("raw", {}).get("p50_ms")
        name = f"{r['model']}@{r['backend']} {r['size'][0]}x{r['size'][1]}"
        rows.append(["latency", f"{name}: Engine.run p50 (vs runtime call)",
                     _ms(r.get("engine", {}).get("p50_ms")), _ms(raw),
                     fmt_ratio(r["ratios"].get("engine/raw")), ""])  # fmt: skip
        for key, label in (("request_raw", "raw"), ("request_png", "PNG")):
            if key not in r:
                continue
            target = r.get("goal_target_ms")
            goal = ""
            if target is not None:
                met = r.get(f"goal_met_{key}")
                goal = f"<= {target:.2f} ms: {'met' if met else 'NOT met'}"
            rows.append(["latency", f"{name}: ZMQ request p50, {label} payloads",
                         _ms(r[key]["p50_ms"]), _ms(raw),
                         fmt_ratio(r["ratios"].get(f"{key}/raw")), goal])  # fmt: skip
    return rows


def stream_rows(s: dict[str, Any]) -> list[Row]:
    e, mp, raw = s.get("edged", {}), s.get("mediapipe", {}), s.get("raw_litert", {})
    par = s.get("raw_litert_parallel", {})
    # The goal is judged on the best configuration (``best``), so its mark goes on that row.
    best = s.get("best", "edged")

    def goal(key: str) -> str:
        return _goal(s, "stream fps") if key == best else ""

    extra: list[Row] = []
    for key, label in (
        ("edged_raw", "raw masks"),
        ("edged_raw_parallel", "raw masks, parallel = 2"),
    ):
        if key in s:
            r = s[key]
            extra.append(["stream", f"selfie fps with {label} (vs MediaPipe)", r.get("fps"),
                          mp.get("fps", "-"), fmt_ratio(ratio(r.get("fps"), mp.get("fps"))), goal(key)])  # fmt: skip
    if par:
        extra.append(["stream", f"raw LiteRT, {par.get('interpreters')} x 1-thread interpreters "
                      "in parallel (vs MediaPipe): the overlap ceiling", par.get("fps"),
                      mp.get("fps", "-"), fmt_ratio(ratio(par.get("fps"), mp.get("fps"))), ""])  # fmt: skip
    return [
        ["stream", "selfie 640x360 fps, daemon -> subscriber, PNG masks (vs MediaPipe 0.10.14)",
         e.get("fps"), mp.get("fps", mp.get("error", "-")),
         fmt_ratio(ratio(e.get("fps"), mp.get("fps"))), goal("edged")],
        ["stream", "selfie fps vs raw LiteRT loop (ceiling)", e.get("fps"), raw.get("fps"),
         fmt_ratio(ratio(e.get("fps"), raw.get("fps"))), ""],
        *extra,
        ["stream", "capture -> subscriber latency p50 / frames dropped",
         f"{_ms(e.get('e2e_p50_ms'))} / {e.get('dropped')}", "-", "-", ""],
    ]  # fmt: skip


def superres_rows(s: dict[str, Any]) -> list[Row]:
    e, o, cv = s.get("edged", {}), s.get("ort_untiled", {}), s.get("opencv", {})
    w, h = s.get("input", [0, 0])
    return [
        ["superres", f"ESPCN x2 {w}x{h}, out Mpix/s: tiled task vs one untiled ORT call",
         e.get("out_mpix_per_s"), o.get("out_mpix_per_s"),
         fmt_ratio(ratio(e.get("out_mpix_per_s"), o.get("out_mpix_per_s"))), ""],
        ["superres", "ESPCN x2 out Mpix/s: tiled task vs OpenCV DNN 4.10",
         e.get("out_mpix_per_s"), cv.get("out_mpix_per_s", cv.get("error", "-")),
         fmt_ratio(ratio(e.get("out_mpix_per_s"), cv.get("out_mpix_per_s"))), ""],
    ]  # fmt: skip


def swap_rows(s: dict[str, Any]) -> list[Row]:
    ld, rss = s.get("load", {}), s.get("rss", {})
    growth = rss.get("rss_growth_bytes")
    return [
        ["swap", f"{s.get('model')} load s: optimized-model cache hit vs cache off",
         ld.get("cached_load_s"), ld.get("nocache_load_s"), fmt_ratio(ld.get("cached/nocache")), ""],
        ["swap", "load s: cache hit vs cold cache (optimise + write)", ld.get("cached_load_s"),
         ld.get("cold_load_s"), fmt_ratio(ld.get("cached/cold")), ""],
        ["swap", f"RSS after {rss.get('cycles')} load/unload cycles (vs after 1)",
         format_bytes(rss["rss_after_bytes"]) if "rss_after_bytes" in rss else "-",
         format_bytes(rss["rss_before_bytes"]) if "rss_before_bytes" in rss else "-",
         "-" if growth is None else f"{growth / 1e6:+.1f} MB", ""],
    ]  # fmt: skip


def memory_rows(s: dict[str, Any]) -> list[Row]:
    if "peak_over_baseline_bytes" not in s:
        return []
    return [
        ["memory", "pool rotation: peak RSS over baseline (vs budget)",
         format_bytes(s["peak_over_baseline_bytes"]), format_bytes(s.get("budget_bytes", 0)),
         fmt_ratio(ratio(s["peak_over_baseline_bytes"], s.get("budget_bytes"))),
         "met" if s.get("peak_within_budget") else "NOT met"],
        ["memory", "final RSS minus baseline after closing the pool",
         f"{s.get('final_minus_baseline_bytes', 0) / 1e6:+.1f} MB", "<= 30 MB", "-",
         "met" if s.get("final_within_30mb") else "NOT met"],
    ]  # fmt: skip


def generation_rows(s: dict[str, Any]) -> list[Row]:
    base = s.get("baseline_resident") or {}
    if "peak_rss_bytes" not in s:
        return []
    return [
        ["generation", f"peak RSS, budgeted ({s.get('resident_strategy')}) vs all resident",
         format_bytes(s["peak_rss_bytes"]),
         format_bytes(base["peak_rss_bytes"]) if "peak_rss_bytes" in base else "-",
         fmt_ratio(ratio(s["peak_rss_bytes"], base.get("peak_rss_bytes"))), ""],
        ["generation", "seconds per image, budgeted vs all resident", s.get("seconds_total"),
         base.get("seconds_total"), fmt_ratio(ratio(s.get("seconds_total"),
                                                      base.get("seconds_total"))), ""],
    ]  # fmt: skip


def quantization_rows(s: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for r in s.get("rows", []):
        if r.get("int8_ms") is None or r.get("fp32_ms") is None:
            continue
        gate = r.get("gate") or {}
        verdict = "" if not gate else "gate passed" if gate.get("passed") else "gate failed"
        rows.append(["quantization", f"{r['model']}@{r['backend']} int8 ({r.get('int8_file')}) "
                     "ms vs fp32", _ms(r["int8_ms"]), _ms(r["fp32_ms"]),
                     fmt_ratio(ratio(r["int8_ms"], r["fp32_ms"])), verdict])  # fmt: skip
    return rows


ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "latency": latency_rows,
    "stream": stream_rows,
    "superres": superres_rows,
    "swap": swap_rows,
    "memory": memory_rows,
    "generation": generation_rows,
    "quantization": quantization_rows,
}


def headline_rows(suites: dict[str, dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    for name, result in suites.items():
        if "error" in result and len(result) <= 3:
            rows.append([name, "error", str(result["error"])[:120], "-", "-", ""])
            continue
        fn = ROWS.get(name)
        if fn is not None:
            try:
                rows += fn(result)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                rows.append(
                    [name, "unreadable result", f"{type(exc).__name__}: {exc}", "-", "-", ""]
                )
    return rows
