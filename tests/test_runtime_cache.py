"""Compile caches: a second load reads the cached artefact (behaviour, never timing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.runtime import config_for, open_session
from edged.runtime.base import file_sha256
from edged.runtime.onnx import plan_session
from edged.testing import make_scale_model


def _cached_models(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "onnxruntime").glob("*/model.onnx"))


def test_onnxruntime_second_load_reads_the_optimized_model(tmp_path: Path) -> None:
    model = make_scale_model(tmp_path / "models" / "scale.onnx", 3.0)
    cache_dir = tmp_path / "cache"
    config = config_for("onnx:cpu", threads=1)

    first = open_session(config, model, cache_dir=cache_dir)
    assert (first.cache, first.loaded_from) == ("miss", model)  # type: ignore[attr-defined]
    [cached] = _cached_models(cache_dir)
    # Nothing half-written is left beside it.
    assert [p.name for p in (cache_dir / "onnxruntime").iterdir()] == [cached.parent.name]

    second = open_session(config, model, cache_dir=cache_dir)
    assert (second.cache, second.loaded_from) == ("hit", cached)  # type: ignore[attr-defined]

    # Proof the original is not read on a hit: break it, keep its catalogue sha256, load again.
    sha = file_sha256(model)
    model.write_bytes(b"garbage")
    third = open_session(config, model, cache_dir=cache_dir, sha256=sha)
    x = np.random.default_rng(0).random((1, 3, 5, 9), dtype=np.float32)
    np.testing.assert_allclose(third.run({"input": x})["output"], 3.0 * x, atol=1e-6)


def test_corrupt_cache_entry_is_rebuilt_not_fatal(tmp_path: Path) -> None:
    model = make_scale_model(tmp_path / "scale.onnx", 2.0)
    cache_dir = tmp_path / "cache"
    config = config_for("onnx:cpu", threads=1)
    open_session(config, model, cache_dir=cache_dir)
    [cached] = _cached_models(cache_dir)
    cached.write_bytes(b"\x00truncated")

    session = open_session(config, model, cache_dir=cache_dir)
    assert session.cache == "miss"  # type: ignore[attr-defined]
    assert _cached_models(cache_dir) == [cached]
    assert open_session(config, model, cache_dir=cache_dir).cache == "hit"  # type: ignore[attr-defined]


def test_cache_key_follows_the_model_bytes(tmp_path: Path) -> None:
    config = config_for("onnx:cpu", threads=1)
    a = make_scale_model(tmp_path / "a.onnx", 2.0)
    b = make_scale_model(tmp_path / "b.onnx", 5.0)
    for path in (a, b):
        open_session(config, path, cache_dir=tmp_path / "cache")
    assert len(_cached_models(tmp_path / "cache")) == 2
    # Same bytes at another path: same key, so a hit.
    c = tmp_path / "copy.onnx"
    c.write_bytes(a.read_bytes())
    assert open_session(config, c, cache_dir=tmp_path / "cache").cache == "hit"  # type: ignore[attr-defined]


def test_no_cache_dir_means_no_cache(tmp_path: Path) -> None:
    session = open_session(config_for("onnx:cpu"), make_scale_model(tmp_path / "m.onnx"))
    assert session.cache == "off"  # type: ignore[attr-defined]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_openvino_compiles_once_into_cache_dir(tmp_path: Path, shared_models: Path) -> None:
    cache_dir = tmp_path / "cache"
    config = config_for("openvino:cpu", threads=1, precision="fp32")
    first = open_session(config, shared_models / "espcn_x2.onnx", cache_dir=cache_dir)
    assert first.cache == "miss"  # type: ignore[attr-defined]
    blobs = sorted((cache_dir / "openvino" / "f32").glob("*.blob"))
    assert len(blobs) == 1
    stamp = blobs[0].stat().st_mtime_ns
    session = open_session(config, shared_models / "espcn_x2.onnx", cache_dir=cache_dir)
    # Imported, not recompiled: no new blob and the old one untouched.
    assert sorted((cache_dir / "openvino" / "f32").glob("*.blob")) == blobs
    assert blobs[0].stat().st_mtime_ns == stamp
    assert session.cache == "hit"  # type: ignore[attr-defined]
    out = session.run({"IteratorGetNext:0": np.zeros((1, 8, 8, 1), np.float32)})
    assert out["NCHW_output:0"].shape == (1, 1, 16, 16)


@pytest.mark.arm64
def test_openvino_cache_hit_still_honours_fp32(tmp_path: Path, shared_models: Path) -> None:
    """A cache filled by a default-precision load (bf16 on x86 CPUs that have it, f16 on ARM
    cores with fp16 arithmetic, e.g. Cortex-A76) must not make a later fp32 load inexact: the
    ARM plugin bakes the precision into the blob, so each precision has its own blob."""
    model = shared_models / "espcn_x2.onnx"
    cache_dir = tmp_path / "cache"
    x = np.random.default_rng(2).random((1, 24, 20, 1), dtype=np.float32)
    reference = open_session(config_for("onnx:cpu"), model).run({"IteratorGetNext:0": x})
    open_session(config_for("openvino:cpu"), model, cache_dir=cache_dir)
    for expected_cache in ("miss", "hit"):  # the fp32 blob, then an import of it
        exact = open_session(
            config_for("openvino:cpu", precision="fp32"), model, cache_dir=cache_dir
        )
        assert exact.cache == expected_cache  # type: ignore[attr-defined]
        got = exact.run({"IteratorGetNext:0": x})["NCHW_output:0"]
        np.testing.assert_allclose(got, reference["NCHW_output:0"], atol=1e-4)
    blobs = sorted(p.parent.name for p in (cache_dir / "openvino").glob("*/*.blob"))
    assert blobs == ["default", "f32"]


def test_qnn_plan_writes_then_reuses_a_context_model(tmp_path: Path) -> None:
    """QNN cannot run here; its plan (options + context-cache files) is plain configuration."""
    model = make_scale_model(tmp_path / "m.onnx")
    config = config_for("onnx:qnn", precision="fp16")
    plan = plan_session(model, config, tmp_path / "cache")
    [(provider, options), fallback] = plan.providers
    assert (provider, fallback) == ("QNNExecutionProvider", "CPUExecutionProvider")
    assert options["backend_path"] == "libQnnHtp.so"
    assert options["htp_performance_mode"] == "sustained_high_performance"
    assert options["enable_htp_fp16_precision"] == "1"
    assert plan.cache_state == "miss"
    assert plan.opts.get_session_config_entry("ep.context_enable") == "1"
    written = Path(plan.opts.get_session_config_entry("ep.context_file_path"))
    assert plan.final is not None
    assert written.name == plan.final.name
    # Once a context model exists, the next plan loads it instead of the original.
    plan.final.parent.mkdir(parents=True)
    plan.final.write_bytes(b"ctx")
    again = plan_session(model, config, tmp_path / "cache")
    assert (again.cache_state, again.source) == ("hit", plan.final)


def test_openvino_ep_plan_gets_device_precision_and_cache_dir(tmp_path: Path) -> None:
    model = make_scale_model(tmp_path / "m.onnx")
    plan = plan_session(model, config_for("onnx:openvino", threads=2, precision="fp32"), tmp_path)
    [(_, options), _] = plan.providers
    assert options == {
        "device_type": "CPU",
        "precision": "FP32",
        "num_of_threads": "2",
        "cache_dir": str(tmp_path / "onnx-openvino"),
    }


@pytest.mark.parametrize("backend", ["onnx:cpu", "openvino:cpu"])
def test_unusable_cache_dir_still_loads(backend: str, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file where the cache dir should be")
    model = make_scale_model(tmp_path / "m.onnx", 2.0)
    session = open_session(config_for(backend), model, cache_dir=not_a_dir)
    assert session.cache == "off"  # type: ignore[attr-defined]
    x = np.ones((1, 3, 4, 4), np.float32)
    np.testing.assert_allclose(session.run({"input": x})["output"], 2.0 * x)
