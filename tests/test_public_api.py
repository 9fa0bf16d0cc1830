"""The package's public surface: ``from edged import ...``, a cheap ``import edged``, and the
one-of-each helpers (TOML writer, file digest) the rest of the package shares."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import edged
from edged.util.digest import file_sha256
from edged.util.toml_text import toml_document, toml_value


def test_toml_writer_round_trips_through_tomllib(tmp_path: Path) -> None:
    top = {
        "model_dirs": [tmp_path / "m", "x y"],
        "threads": 2,
        "ratio": 0.1,
        "big": float("inf"),
        "on": True,
        "unset": None,  # TOML has no null: left out
        "quoted key": 'say "hi" \\ é',
        "inline": {"a": 1, "b-c": [1, 2]},
    }
    text = toml_document(
        top, {"zmq": {"stats_interval_s": 0.5}}, {"streams": [{"name": "a"}, {"name": "b"}]}
    )
    back = tomllib.loads(text)
    assert back["model_dirs"] == [str(tmp_path / "m"), "x y"]
    assert back["quoted key"] == 'say "hi" \\ é'
    assert (back["ratio"], back["big"], back["on"]) == (0.1, float("inf"), True)
    assert "unset" not in back
    assert back["inline"] == {"a": 1, "b-c": [1, 2]}
    assert back["zmq"] == {"stats_interval_s": 0.5}
    assert back["streams"] == [{"name": "a"}, {"name": "b"}]
    with pytest.raises(TypeError, match="cannot write object"):
        toml_value(object())


def test_file_sha256_streams_in_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path, chunk=4096) == hashlib.sha256(data).hexdigest()


def test_public_names_import_from_the_package() -> None:
    from edged import (  # noqa: F401 - the import is the test
        BadRequest,
        Client,
        EdgedError,
        Engine,
        Subscriber,
        TaskRequest,
        TaskResult,
        load_settings,
    )
    from edged.engine import Engine as EngineHome

    assert Engine is EngineHome
    assert set(edged.__all__) - {"__version__"} == set(edged._HOME)
    errors = [getattr(edged, n) for n, home in edged._HOME.items() if home == "edged.errors"]
    assert len(errors) == 15
    assert all(issubclass(e, EdgedError) for e in errors)
    assert issubclass(BadRequest, EdgedError)
    request = TaskRequest(task="segmentation")
    assert request.task == "segmentation"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = edged.Nope  # type: ignore[attr-defined]


HEAVY = ("onnxruntime", "cv2", "zmq", "openvino", "ai_edge_litert", "numpy", "pydantic")


def _imported_after(code: str) -> list[str]:
    probe = f"import sys; {code}; print(__import__('json').dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr == ""
    loaded: list[str] = json.loads(done.stdout)
    return [m for m in HEAVY if m in loaded]


def test_import_edged_is_cheap_and_silent() -> None:
    assert _imported_after("import edged") == []
    # The control: the same probe does see a runtime once a public name needs one.
    assert "zmq" in _imported_after("from edged import Client")


def test_quantization_uses_only_the_public_task_api() -> None:
    import re

    import edged.tasks

    allowed = {"edged.tasks", "edged.tasks.preprocess"}
    package = Path(edged.__file__).parent / "quantization"
    for path in package.glob("*.py"):
        imports = re.findall(r"^\s*(?:from|import) (edged\.tasks[\w.]*)", path.read_text(), re.M)
        used = set(imports)
        assert used <= allowed, f"{path.name} reaches into {sorted(used - allowed)}"
    assert all(callable(getattr(edged.tasks, name)) for name in edged.tasks.__all__)


def test_lru_keeps_the_most_recent_and_reports_hits() -> None:
    from edged.util.lru import LRU

    cache: LRU[str, int] = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert (cache.get("b"), len(cache)) == (None, 2)
    assert cache.get_or_compute("a", lambda: 99) == (1, True)
    assert cache.get_or_compute("d", lambda: 4) == (4, False)
    cache.clear()
    assert len(cache) == 0


def test_one_lazy_opencv_import_for_the_modules_that_need_it() -> None:
    # The wire payloads and stream sources import without OpenCV; they get it on first use.
    assert "cv2" not in _imported_after("import edged.wire.payloads, edged.daemon.sources")
    from edged.util import optional

    assert optional.cv2().__name__ == "cv2"
