"""Sources in-process: video/image files, every_nth, loop, dead cameras and bad config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.config import ServiceSettings, StreamSettings
from edged.daemon.sources import CaptureSource, ImageSource, _redact, source_kind
from edged.errors import ConfigError, SourceError
from edged.testing.cameras import FrameSink, moving_frames, write_video
from edged.testing.waits import wait_until

FAST = ServiceSettings(reconnect_initial_s=0.05, reconnect_max_s=0.2)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    base = np.random.default_rng(1).integers(0, 255, (80, 80, 3), dtype=np.uint8)
    return write_video(tmp_path / "clip.avi", moving_frames(base, 6, (32, 24)))


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("/dev/video0", "camera"),
        ("2", "camera"),
        ("rtsp://cam/1", "stream"),
        ("http://cam/mjpg", "stream"),
        ("dir:/srv/inbox", "inbox"),
        ("/x/clip.MP4", "video"),
        ("/x/a.jpeg", "image"),
    ],
)
def test_source_kind(source: str, kind: str) -> None:
    assert source_kind(source) == kind


def test_unknown_source_is_a_config_error_naming_the_forms() -> None:
    with pytest.raises(ConfigError, match=r"rtsp://.*dir:PATH"):
        source_kind("/x/notes.txt")


def test_credentials_never_reach_events() -> None:
    assert _redact("rtsp://admin:secret@10.0.0.2/live") == "rtsp://***@10.0.0.2/live"
    assert _redact("rtsp://10.0.0.2/live") == "rtsp://10.0.0.2/live"


def test_video_file_delivers_every_nth_frame_rgb_then_ends(video: Path) -> None:
    sink = FrameSink()
    cfg = StreamSettings(name="v", source=str(video), task="segmentation", every_nth=2)
    src = CaptureSource(cfg, FAST, sink.deliver, sink.on_state)
    src.start()
    assert wait_until(lambda: "ended" in sink.state_names(), 20)
    assert [f.meta["frame"] for f in sink.frames] == [0, 2, 4]
    assert [f.seq for f in sink.frames] == [0, 1, 2]
    assert sink.frames[0].image.shape == (24, 32, 3)
    assert sink.frames[0].image.dtype == np.uint8
    assert sink.state_names() == ["up", "ended"]
    assert src.stats()["frames_read"] == 6


def test_looping_video_restarts_and_stops_on_request(video: Path) -> None:
    sink = FrameSink()
    cfg = StreamSettings(name="v", source=str(video), task="segmentation", loop=True)
    src = CaptureSource(cfg, FAST, sink.deliver, sink.on_state)
    src.start()
    assert wait_until(lambda: len(sink.frames) > 12, 20)
    src.stop()
    assert "ended" not in sink.state_names()
    assert sink.state_names()[-1] == "stopped"
    assert [f.seq for f in sink.frames] == list(range(len(sink.frames)))


def test_file_source_stops_reading_when_not_accepted(video: Path) -> None:
    sink = FrameSink(accept=False)
    cfg = StreamSettings(name="v", source=str(video), task="segmentation")
    src = CaptureSource(cfg, FAST, sink.deliver, sink.on_state)
    src.start()
    assert wait_until(lambda: sink.state_names()[-1:] == ["stopped"], 20)
    assert len(sink.frames) == 1


def test_missing_camera_goes_down_then_reconnects_with_capped_backoff() -> None:
    sink = FrameSink()
    cfg = StreamSettings(name="cam", source="/dev/video99", task="segmentation")
    src = CaptureSource(cfg, FAST, sink.deliver, sink.on_state)
    src.start()
    assert wait_until(lambda: sink.state_names().count("reconnecting") >= 4, 20)
    src.stop()
    names = sink.state_names()
    assert names[0] == "down"
    delays = [d["delay_s"] for s, d in sink.states if s == "reconnecting"]
    assert delays[:3] == [0.05, 0.1, 0.2]
    assert max(delays) == 0.2
    assert not sink.frames


def test_missing_files_are_source_errors(tmp_path: Path) -> None:
    sink = FrameSink()
    video = StreamSettings(name="v", source=str(tmp_path / "no.mp4"), task="segmentation")
    with pytest.raises(SourceError, match="video file not found"):
        CaptureSource(video, FAST, sink.deliver, sink.on_state)
    image = StreamSettings(name="i", source=str(tmp_path / "no.png"), task="segmentation")
    with pytest.raises(SourceError, match="image file not found"):
        ImageSource(image, sink.deliver, sink.on_state)


def test_undecodable_image_file_reports_down(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    sink = FrameSink()
    src = ImageSource(
        StreamSettings(name="i", source=str(bad), task="segmentation"), sink.deliver, sink.on_state
    )
    src.start()
    src.stop()
    assert sink.state_names() == ["down"]
    assert "cannot decode" in sink.states[0][1]["error"]


def test_pacer_applies_every_nth_then_max_fps_on_the_source_clock() -> None:
    from edged.daemon.sources import _Pacer

    now = [0.0]
    pacer = _Pacer(every_nth=2, max_fps=5.0, clock=lambda: now[0])
    taken = []
    for i in range(20):  # a 20 fps camera for one second
        now[0] = i * 0.05
        if pacer.take():
            taken.append(i)
    # every 2nd frame is a candidate (10 fps), max_fps keeps one per 0.2 s
    assert taken == [0, 4, 8, 12, 16]
