"""A ``[[streams]]`` entry's params are checked once, when the settings load: ``edged config
check`` names the stream and the parameter, and a SIGHUP reload bringing a bad stream is
refused while the running streams keep going (instead of that stream failing every frame)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from edged.testing.cameras import moving_frames, write_video
from edged.testing.daemon import Collector, Daemon, config_toml, toml_config


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged", "config", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _stream(**over: object) -> dict[str, object]:
    return {"name": "sr", "source": "/tmp/in.mp4", "task": "superres", **over}


@pytest.mark.parametrize(
    ("stream", "says"),
    [
        (_stream(params={"tile": 0}), "params.tile 0: expected an integer in 32..4096"),
        (_stream(params={"halo": 65}), "params.halo 65: expected an integer in 0..64"),
        (
            _stream(params={"activation_bytes_per_px": 1}),
            "params.activation_bytes_per_px is the model's measured cost",
        ),
        (
            _stream(task="segmentation", params={"radius": "nan"}),
            "params.radius 'nan': expected",
        ),
        (
            _stream(task="segmentation", params={"colour": "red"}),
            "params.colour: segmentation has no such parameter",
        ),
    ],
)
def test_config_check_names_the_stream_and_parameter(
    tmp_path: Path, stream: dict[str, object], says: str
) -> None:
    config = tmp_path / "edged.toml"
    good = {**stream, "name": "ok", "params": {}}
    config.write_text(config_toml({}, None, [good, stream]))
    done = _check(config)
    assert done.returncode == 2, done.stdout
    assert f"streams.1.params: stream 'sr' ({stream['task']}): {says}" in done.stderr
    assert "Traceback" not in done.stderr
    assert "streams.0" not in done.stderr  # the good stream is not blamed


def test_config_check_accepts_good_stream_params(tmp_path: Path) -> None:
    config = tmp_path / "edged.toml"
    streams = [
        _stream(params={"tile": "256", "overlap": 8}),  # decimal text, as --param sends
        _stream(name="seg", task="segmentation", params={"output": "blur", "radius": 9}),
    ]
    config.write_text(config_toml({}, None, streams))
    done = _check(config)
    assert done.returncode == 0, done.stderr
    assert "streams     2: sr, seg" in done.stdout


def test_config_does_not_import_numpy_to_check_params() -> None:
    # The check runs inside the foundation config module; edged.tasks.params must stay light.
    probe = (
        "import sys, edged.config, edged.tasks.params; "
        "print(sorted(m for m in ('numpy', 'cv2', 'onnxruntime') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout.replace("'", '"')) == []


def test_reload_with_a_bad_stream_param_is_refused_and_old_streams_run(
    tmp_path: Path, shared_models: Path, shared_images: Path
) -> None:
    image = cv2.cvtColor(
        cv2.imread(str(shared_images / "portraits" / "astronaut.png")), cv2.COLOR_BGR2RGB
    )
    video = write_video(tmp_path / "clip.avi", moving_frames(image, 8, (64, 64)))
    seg = {"name": "vid", "source": str(video), "task": "segmentation", "max_fps": 10, "loop": True}
    config = toml_config(tmp_path / "edged.toml", shared_models, [seg])
    daemon = Daemon(config, tmp_path)
    collector: Collector | None = None
    try:
        daemon.start()
        collector = Collector(daemon.results_endpoint)
        assert collector.until(lambda m: m.topic == "vid.segmentation"), daemon.log()

        bad = {**seg, "name": "bad", "params": {"output": "blur", "radius": 1000}}
        toml_config(config, shared_models, [seg, bad])
        daemon.signal(signal.SIGHUP)
        assert daemon.notify.wait_for("READY", "1", n=2, timeout=20), daemon.log()
        status = [m for m in daemon.notify.messages if m.get("READY") == "1"][-1]["STATUS"]
        assert status.startswith(
            "reload failed: streams.1.params: stream 'bad' (segmentation): "
            "params.radius 1000: expected a finite number in 3..201"
        ), status
        assert collector.until(
            lambda m: m.topic == "events.service" and m.header["data"]["state"] == "reload_failed"
        )
        refused = next(
            m
            for m in collector.messages
            if m.topic == "events.service" and m.header["data"]["state"] == "reload_failed"
        )
        assert "stream 'bad'" in refused.header["data"]["error"]
        # The old stream keeps publishing; the bad one never started (no event, no results).
        seen = len(collector.results("vid.segmentation"))
        assert collector.until(lambda _: len(collector.results("vid.segmentation")) > seen + 2)
        assert not [m for m in collector.messages if m.topic.startswith("bad.")]
        assert not collector.events("bad", "up")
        assert daemon.alive()
    finally:
        if collector is not None:
            collector.sub.close()
        daemon.close()
