"""The package's public surface: ``from edged import ...``, a cheap ``import edged``, and the
one-of-each helpers (TOML writer, file digest) the rest of the package shares."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest

from edged.digest import file_sha256
from edged.toml_text import toml_document, toml_value


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
