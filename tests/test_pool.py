"""The model pool with real onnxruntime sessions on generated MatMul models (about 10 MB each).

Budgets are stated in MB against *seeded* estimates (resident 10 MB, load peak 42 MB, reserved
with the pool's 6% margin: 44.5 MB), so the pool's decisions do not hinge on allocator noise;
the costs it charges are still measured.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edged.config import load_settings
from edged.errors import Busy, ConfigError, MemoryBudgetExceeded, ModelLoadError
from edged.memory import release_memory, rss_bytes, wait_settled
from edged.pool.budget import effective_budget
from edged.pool.estimates import ESTIMATES_FILE
from edged.pool.model_pool import ModelPool
from edged.runtime import config_for, open_session
from edged.runtime.base import Session
from edged.schema import format_bytes
from edged.testing import make_matmul_model, make_scale_model

MB = 1_000_000
KEYS = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pool-models")
    found = {k: make_matmul_model(root / f"{k}.onnx", 10, seed=i) for i, k in enumerate(KEYS)}
    found["big"] = make_matmul_model(root / "big.onnx", 30, seed=9)
    found["tiny"] = make_scale_model(root / "tiny.onnx")
    # The first session in a process also pays onnxruntime's one-time setup (~25 MB): do it
    # here so no test's first model is charged for it.
    _loader(found["tiny"])().close()
    return found


def _loader(path: Path) -> Callable[[], Session]:
    return lambda: open_session(config_for("onnx:cpu", threads=1), path)


def _pool(budget_mb: float, *, seed: bool = True, **kw: object) -> ModelPool[Session]:
    options: dict = {"wait_s": 5.0, "slack": 0.0, **kw}
    pool: ModelPool[Session] = ModelPool(int(budget_mb * MB), **options)
    if seed:
        for key in KEYS:
            pool.estimates.observe(key, 10 * MB, 42 * MB)
    return pool


def _use(pool: ModelPool[Session], models: dict[str, Path], key: str, **kw: object) -> None:
    kw.setdefault("estimate_bytes", models[key].stat().st_size)
    with pool.acquire(key, _loader(models[key]), **kw) as session:  # type: ignore[arg-type]
        name = session.inputs[0].name
        n = session.inputs[0].shape[1]
        assert isinstance(n, int)
        [y] = session.run({name: np.ones((1, n), np.float32)}).values()
        assert y.shape == (1, n)


@pytest.fixture
def pool_factory() -> Iterator[Callable[..., ModelPool[Session]]]:
    made: list[ModelPool[Session]] = []

    def make(budget_mb: float, **kw: object) -> ModelPool[Session]:
        made.append(_pool(budget_mb, **kw))
        return made[-1]

    yield make
    for pool in made:
        pool.close()


def test_evicts_least_recently_used_first(pool_factory, models) -> None:
    pool = pool_factory(60)
    _use(pool, models, "a")
    _use(pool, models, "b")
    _use(pool, models, "a")  # a is now more recent than b
    _use(pool, models, "c")  # a 44.5 MB peak does not fit beside a + b: b goes
    assert pool.resident() == ["a", "c"]
    stats = pool.stats()
    assert (stats["loads"], stats["hits"], stats["evictions"]) == (3, 1, 1)
    assert stats["resident_bytes"] <= pool.budget
    for model in stats["models"]:  # charged costs are measured: about the 10 MB of weights
        assert 5 * MB < model["bytes"] < 25 * MB
        assert model["peak_bytes"] >= model["bytes"]


def test_batch_eviction_keeps_slack_to_avoid_flapping(pool_factory, models) -> None:
    pool = pool_factory(70, slack=10 / 70)  # 10 MB of slack on top of the 44.5 MB peak
    for key in ("a", "b", "c"):
        _use(pool, models, key)
    _use(pool, models, "d")
    # One eviction would make room for the peak, but not for the slack: a and b both go.
    assert pool.resident() == ["c", "d"]
    assert pool.stats()["evictions"] == 2


def test_model_in_use_is_never_evicted(pool_factory, models) -> None:
    pool = pool_factory(60)
    with pool.acquire("a", _loader(models["a"])):
        _use(pool, models, "b")
        _use(pool, models, "c")  # a is LRU but held: b is evicted instead
        assert pool.resident() == ["a", "c"]
    assert pool.resident() == ["c", "a"]


def test_configured_pins_are_never_evicted(pool_factory, models) -> None:
    pool = pool_factory(60, pinned=["a"])
    _use(pool, models, "a")
    _use(pool, models, "b")
    _use(pool, models, "c")
    assert pool.resident() == ["a", "c"]
    assert pool.evict("a") is False
    assert [m["pinned"] for m in pool.stats()["models"] if m["key"] == "a"] == [True]
    assert pool.evict("a", force=True) is True


def test_acquire_pinned_keeps_the_model_resident(pool_factory, models) -> None:
    pool = pool_factory(60)
    _use(pool, models, "d", pinned=True)
    _use(pool, models, "a")
    _use(pool, models, "b")  # d is LRU but pinned: a goes
    assert pool.resident() == ["d", "b"]


def test_model_that_cannot_fit_alone_is_refused(pool_factory, models) -> None:
    pool = pool_factory(40, seed=False)
    size = models["big"].stat().st_size
    with pytest.raises(MemoryBudgetExceeded) as err:
        _use(pool, models, "big", estimate_bytes=size)
    message = str(err.value)
    assert message.startswith("big needs ")
    assert "estimated from its size" in message
    assert f"the memory budget is {format_bytes(40 * MB)}" in message
    assert "raise memory_budget" in message
    assert pool.resident() == []
    assert pool.stats()["refused"] == 1


def test_model_that_cannot_fit_beside_pinned_ones_names_them(pool_factory, models) -> None:
    pool = pool_factory(58, pinned=["a", "b"])
    _use(pool, models, "a")
    _use(pool, models, "b")
    with pytest.raises(MemoryBudgetExceeded, match=r"pinned models \(a, b\) hold .*pinned_models"):
        _use(pool, models, "c")
    assert pool.resident() == ["a", "b"]


def test_busy_after_bounded_wait_when_everything_is_in_use(pool_factory, models) -> None:
    pool = pool_factory(60, wait_s=0.3)
    held = threading.Event()
    done = threading.Event()

    def hold(key: str) -> None:
        with pool.acquire(key, _loader(models[key])):
            held.set()
            done.wait(30)

    holders = [threading.Thread(target=hold, args=(k,)) for k in ("a", "b")]
    for thread in holders:
        held.clear()
        thread.start()
        assert held.wait(30)
    try:
        with pytest.raises(Busy, match=r"no memory for c .*in use \(a, b\)"):
            _use(pool, models, "c")
    finally:
        done.set()
        for thread in holders:
            thread.join(30)
    assert pool.stats()["busy"] == 1
    _use(pool, models, "c")  # released: now it loads
    assert "c" in pool.resident()


def test_concurrent_jobs_never_deadlock(pool_factory, models) -> None:
    pool = pool_factory(80, wait_s=2.0, use_wait_s=2.0)
    outcomes: Counter[str] = Counter()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(6):
            first, second = rng.sample(KEYS, 2)
            try:
                if seed % 3 == 0:  # nested: hold one model while acquiring another
                    with pool.acquire(first, _loader(models[first])):
                        _use(pool, models, second)
                else:
                    _use(pool, models, first)
                result = "ok"
            except Busy:
                result = "busy"
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                outcomes[result] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a worker is stuck: deadlock"
    assert errors == []
    # Every job got an answer (under a loaded machine some may be `busy`: that is the bound).
    assert sum(outcomes.values()) == 6 * 6
    assert outcomes["ok"] > 0
    _use(pool, models, "a")  # and the pool is not wedged afterwards
    stats = pool.stats()
    assert all(m["users"] == 0 for m in stats["models"])
    assert stats["resident_bytes"] <= pool.budget
    assert stats["loads"] >= 4


def test_rss_returns_after_unload(pool_factory, models) -> None:
    with pool_factory(200, seed=False).acquire("tiny", _loader(models["tiny"])):
        pass  # onnxruntime's own one-time allocations happen outside the measurement
    pool = pool_factory(200, seed=False)
    release_memory()
    before = wait_settled()
    _use(pool, models, "big")
    [model] = pool.stats()["models"]
    assert model["bytes"] > 20 * MB  # the 30 MB of weights, measured
    assert rss_bytes() - before > 20 * MB
    assert pool.evict("big") is True
    returned_to = wait_settled()
    assert returned_to - before < 0.3 * model["bytes"]
    assert pool.resident() == []


def test_estimates_are_persisted_and_reused(tmp_path: Path, models) -> None:
    path = tmp_path / "state" / ESTIMATES_FILE
    first: ModelPool[Session] = ModelPool(200 * MB, estimates_path=path)
    _use(first, models, "a")
    first.close()
    saved = json.loads(path.read_text())["models"]["a"]
    assert saved["observations"] == 1
    assert saved["peak_bytes"] >= saved["resident_bytes"] > 5 * MB
    # A new pool predicts from the measurement, not from a size hint.
    second: ModelPool[Session] = ModelPool(saved["peak_bytes"] - 1, estimates_path=path)
    with pytest.raises(MemoryBudgetExceeded, match=r"a needs .* \(measured\)"):
        _use(second, models, "a", estimate_bytes=1)
    third: ModelPool[Session] = ModelPool(200 * MB, estimates_path=path)
    _use(third, models, "a")
    third.close()
    assert json.loads(path.read_text())["models"]["a"]["observations"] == 2


def test_failed_load_frees_its_reservation(pool_factory, models, tmp_path: Path) -> None:
    pool = pool_factory(60)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"broken\.onnx"), pool.acquire("a", _loader(broken)):
        pass
    assert pool.stats()["load_errors"] == 1
    assert pool.stats()["resident_bytes"] == 0
    _use(pool, models, "a")  # the key is usable again
    assert pool.resident() == ["a"]


def test_evict_in_use_happens_at_release_and_stats_are_json(pool_factory, models) -> None:
    pool = pool_factory(60)
    with pool.acquire("a", _loader(models["a"])):
        assert pool.evict("a") is False
        assert pool.resident() == ["a"]
    assert pool.resident() == []
    _use(pool, models, "b")
    _use(pool, models, "b")
    stats = json.loads(json.dumps(pool.stats()))
    assert stats["hit_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert stats["evictions"] == 1
    assert stats["models"][0]["key"] == "b"


@pytest.mark.parametrize(
    ("budget", "profile", "cgroup", "reserve", "expected"),
    [
        (None, None, None, 200 * MB, 1500 * MB),
        ("1G", None, None, 200 * MB, 1000 * MB),
        ("2G", 1200 * MB, None, 200 * MB, 1200 * MB),
        (None, None, 1000 * MB, 200 * MB, 800 * MB),
        ("1G", 900 * MB, 4000 * MB, 0, 900 * MB),
    ],
)
def test_effective_budget(budget, profile, cgroup, reserve, expected) -> None:
    overrides = {"memory_reserve": reserve, **({"memory_budget": budget} if budget else {})}
    settings = load_settings(overrides=overrides)
    assert effective_budget(settings, profile, cgroup) == expected


def test_reserve_larger_than_cgroup_is_a_config_error() -> None:
    settings = load_settings(overrides={"memory_reserve": "300M"})
    with pytest.raises(ConfigError, match="memory_reserve"):
        effective_budget(settings, None, 250 * MB)


def test_engine_acquires_through_the_pool(shared_models: Path) -> None:
    from edged.engine import Engine

    settings = load_settings(overrides={"model_dirs": [str(shared_models)]})
    engine = Engine(settings)
    try:
        for _ in range(2):
            with engine.acquire("espcn_x2", backend="onnx:cpu") as loaded:
                x = np.zeros((1, 8, 8, 1), np.float32)
                assert loaded.session.run({"IteratorGetNext:0": x})
        stats = engine.stats()
        assert [m["key"] for m in stats["models"]] == ["espcn_x2@onnx:cpu"]
        assert (stats["loads"], stats["hits"]) == (1, 1)
        assert stats["process"]["rss_bytes"] > 0
        assert (settings.state_dir / ESTIMATES_FILE).is_file()
    finally:
        engine.close()
    assert engine.pool.resident() == []


def test_load_and_evict_events_reach_the_listener(pool_factory, models) -> None:
    events: list[tuple[str, str]] = []
    pool = pool_factory(60, on_event=lambda name, fields: events.append((name, fields["key"])))
    _use(pool, models, "a")
    _use(pool, models, "b")
    _use(pool, models, "c")  # evicts a (LRU)
    assert events == [("load", "a"), ("load", "b"), ("evict", "a"), ("load", "c")]
