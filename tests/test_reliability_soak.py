"""Reduced soak: 180 mixed jobs through the RUNNING daemon with a budget that forces the pool
to keep swapping models; no job lost, RSS flat after warm-up, no fd/thread growth.

Mix: selfie segmentation, SR (edged_sr_x2 or fsrcnn_x2, espcn_x2), inpainting (opencv_telea and
a generated LaMa-IO model), tiny text-to-image. Full run: ``edged bench soak --jobs 24000``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from edged.bench.fuzz import LiveDaemon
from edged.bench.soak import DRIFT_LIMIT_MB, JITTER, MIX, plot_rss, run_soak, soak_daemon

JOBS = 180


@pytest.fixture
def daemon(tmp_path: Path, shared_models: Path) -> LiveDaemon:
    # The budget is measured here (largest model's load peak x 1.06), not an x86 figure.
    return soak_daemon(tmp_path / "sk", [shared_models])


def test_mixed_jobs_with_model_swapping_lose_nothing_and_do_not_leak(
    daemon: LiveDaemon, tmp_path: Path
) -> None:
    with daemon as live:
        assert live.proc is not None
        report = run_soak(live.requests_endpoint, live.proc.pid, jobs=JOBS, clients=3, seed=3)
        assert live.alive()
    result = report.as_dict()
    print({k: v for k, v in result.items() if k != "samples"})
    assert report.lost == 0, report.errors[:5]
    assert report.ok == report.jobs == JOBS
    assert set(report.by_kind) == set(MIX)
    assert all(n == JOBS // len(MIX) for n in report.by_kind.values())
    # The budget really forced swapping: models were evicted and loaded again, many times.
    assert result["pool"]["evictions"] >= 10
    assert result["pool"]["loads"] > len(MIX) + result["pool"]["evictions"] // 2
    assert result["rss_drift_mb"] <= DRIFT_LIMIT_MB
    assert result["fds_growth"] <= JITTER
    assert result["threads_growth"] <= JITTER
    assert result["passed"]
    # The report is plain JSON and the curve a readable PNG.
    assert json.loads(json.dumps(result))["samples"][-1]["jobs"] == JOBS
    png = plot_rss(report, tmp_path / "rss.png")
    image = cv2.imread(str(png))
    assert image is not None
    assert image.shape == (420, 900, 3)
    curve = (image[:, :, 0] > 150) & (image[:, :, 2] < 100)
    assert curve.sum() > 100  # the blue RSS curve is drawn
