"""edged.memory and edged.pool.estimates against the real kernel, plus fake cgroup trees on disk."""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from edged.memory import (
    PeakSampler,
    malloc_trim,
    read_cgroup_memory,
    release_memory,
    reset_hwm,
    rss_bytes,
    snapshot,
    wait_settled,
)
from edged.pool.estimates import EstimateTable, process_memory
from edged.testing import make_cgroup_tree

MB = 1_000_000


def test_snapshot_agrees_with_statm() -> None:
    snap = snapshot()
    assert abs(snap.rss - rss_bytes()) < 0.1 * snap.rss
    assert snap.hwm >= snap.rss > 0
    assert snap.anon > 0
    assert snap.pss is not None
    assert 0 < snap.pss <= snap.rss * 1.1
    assert json.dumps(process_memory())


def _wait_for_samples(sampler: PeakSampler, count: int) -> None:
    target = sampler.samples + count
    for _ in range(1000):  # bounded: the sampler thread just needs to be scheduled a few times
        if sampler.samples >= target:
            return
        time.sleep(0.005)
    pytest.fail("the sampler thread took no samples")


def test_peak_sampler_sees_a_transient_allocation() -> None:
    base = rss_bytes()
    with PeakSampler(0.002, limit=base + 30 * MB) as sampler:
        block = np.ones(60 * MB // 8)  # written, so every page is resident
        _wait_for_samples(sampler, 3)
        del block
        sampler.mark()
        _wait_for_samples(sampler, 3)
        after_free = sampler.peak_since_mark()
    assert sampler.peak >= base + 55 * MB
    assert sampler.over_limit >= 1
    assert after_free < base + 30 * MB  # numpy's big blocks are mmapped: freed at once


def test_release_memory_gives_heap_pages_back() -> None:
    gc.collect()
    malloc_trim()
    before = wait_settled()
    # 1 kB objects come from glibc's heap (not pymalloc, not mmap): freeing them leaves
    # the pages with the process until malloc_trim.
    chunks = [os.urandom(1024) for _ in range(60_000)]
    grown = rss_bytes()
    assert grown - before > 40 * MB
    del chunks
    release_memory()
    assert wait_settled() - before < 15 * MB


def test_reset_hwm_lowers_the_peak() -> None:
    block = np.ones(50 * MB // 8)
    del block
    high = snapshot(with_pss=False).hwm
    if not reset_hwm():
        pytest.skip("this kernel refuses /proc/self/clear_refs")
    assert snapshot(with_pss=False).hwm < high


def test_cgroup_v2_takes_the_tightest_limit_up_the_tree(tmp_path: Path) -> None:
    make_cgroup_tree(
        tmp_path,
        version=2,
        cgroup="/system.slice/edged.service",
        limits={"/system.slice": "1000000000", "/system.slice/edged.service": "max"},
        current=123_000_000,
    )
    found = read_cgroup_memory(tmp_path)
    assert found is not None
    assert (found.version, found.max, found.current) == (2, 1_000_000_000, 123_000_000)
    assert found.path == tmp_path / "sys/fs/cgroup/system.slice/edged.service"


def test_cgroup_v2_unlimited_is_none(tmp_path: Path) -> None:
    make_cgroup_tree(tmp_path, version=2, cgroup="/a", limits={"/a": "max"}, current=5)
    found = read_cgroup_memory(tmp_path)
    assert found is not None
    assert found.max is None
    assert found.current == 5


def test_cgroup_v1_limit_and_huge_unlimited(tmp_path: Path) -> None:
    make_cgroup_tree(
        tmp_path / "limited", version=1, cgroup="/docker/x", limits={"/docker/x": "800000000"}
    )
    make_cgroup_tree(
        tmp_path / "free",
        version=1,
        cgroup="/docker/x",
        limits={"/docker/x": "9223372036854771712"},
    )
    limited = read_cgroup_memory(tmp_path / "limited")
    free = read_cgroup_memory(tmp_path / "free")
    assert limited is not None
    assert (limited.version, limited.max) == (1, 800_000_000)
    assert free is not None
    assert free.max is None


def test_cgroup_namespace_reads_the_mount_itself(tmp_path: Path) -> None:
    # Inside a cgroup namespace /proc/self/cgroup names a path the mount does not show.
    make_cgroup_tree(tmp_path, version=2, cgroup="/hidden/deeper", limits={"/": "500000000"})
    found = read_cgroup_memory(tmp_path)
    assert found is not None
    assert found.max == 500_000_000


def test_no_cgroup_files_is_none(tmp_path: Path) -> None:
    assert read_cgroup_memory(tmp_path) is None


def test_this_process_cgroup_is_readable() -> None:
    found = read_cgroup_memory()
    if found is None:
        pytest.skip("no memory cgroup visible here")
    assert found.max is None or found.max > 0


def test_estimates_go_up_at_once_and_down_slowly(tmp_path: Path) -> None:
    path = tmp_path / "est.json"
    table = EstimateTable(path)
    table.observe("m", 100, 200)
    assert table.observe("m", 150, 180).resident_bytes == 150
    lowered = table.observe("m", 50, 100)
    assert 50 < lowered.resident_bytes < 150
    assert lowered.observations == 3
    assert EstimateTable(path).get("m") == lowered


def test_damaged_estimate_file_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "est.json"
    path.write_text("{not json")
    table = EstimateTable(path)
    assert table.get("m") is None
    table.observe("m", 1, 2)
    assert json.loads(path.read_text())["models"]["m"]["peak_bytes"] == 2


def test_bench_memory_command_meets_its_goals(tmp_path: Path, capsys) -> None:
    from edged.cli import main

    code = main(
        [
            "bench",
            "memory",
            "--budget",
            "60M",
            "--cycles",
            "2",
            "--no-shared",
            "--threads",
            "1",
            "--json",
            "--work-dir",
            str(tmp_path),
            "--log-level",
            "error",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["budget_bytes"] == 60 * MB
    assert result["total_model_bytes"] >= 2 * result["budget_bytes"]
    assert result["loads"] >= result["models"] * 2 > 0
    assert result["violations"] == 0
    assert result["peak_rss_bytes"] <= result["baseline_rss_bytes"] + result["budget_bytes"]
    assert result["final_rss_bytes"] - result["baseline_rss_bytes"] <= 30 * MB
