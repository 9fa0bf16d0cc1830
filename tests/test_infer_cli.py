"""``edged infer`` as a real subprocess: one JSON line, the output file, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import structlog

from edged.cli import main
from edged.cli.infer_cmd import summary
from edged.runtime.base import file_sha256
from edged.testing import make_sam_decoder, make_sam_encoder, write_manifest

REF_DIR = Path(__file__).parent / "fixtures" / "selfie_ref"
KEYS = ["task", "model", "backend", "input_shape", "output_shape", "latency_ms"]


def edged(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _json_line(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    data: dict[str, Any] = json.loads(lines[0])
    return data


def test_selfie_mask_on_a_real_portrait(
    shared_models: Path, shared_images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mask.png"
    proc = edged(
        "infer", "segmentation", "--model", "selfie_segmentation",
        "--input", shared_images / "portraits" / "zidane.jpg", "--output", out,
        "--model-dir", shared_models,
    )  # fmt: skip
    line = _json_line(proc)
    assert list(line) == KEYS
    assert line["task"] == "segmentation"
    assert line["model"] == "selfie_segmentation"
    assert line["backend"].startswith("litert")
    assert line["input_shape"] == [720, 1280, 3]
    assert line["output_shape"] == [720, 1280]
    assert set(line["latency_ms"]) == {"pre", "run", "post", "total"}
    assert all(v >= 0 for v in line["latency_ms"].values())
    mask = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    ref = cv2.imread(str(REF_DIR / "zidane_general.png"), cv2.IMREAD_UNCHANGED)
    a, b = mask >= 128, ref >= 128
    assert np.count_nonzero(a & b) / np.count_nonzero(a | b) >= 0.96


def test_cutout_param_writes_rgba_and_json_adds_meta(
    shared_models: Path, shared_images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cut.png"
    proc = edged(
        "infer", "segmentation", "--input", shared_images / "portraits" / "astronaut.png",
        "--output", out, "--model-dir", shared_models, "--param", "output=cutout", "--json",
    )  # fmt: skip
    line = _json_line(proc)
    assert line["output_shape"] == [512, 512, 4]
    assert line["meta"]["primary"] == "cutout"
    assert line["outputs"]["mask"] == [512, 512]
    assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).shape == (512, 512, 4)


def test_points_and_box_reach_mobilesam(tmp_path: Path) -> None:
    models, catalog = tmp_path / "models", tmp_path / "catalog"
    files = {}
    for role, build in (("encoder", make_sam_encoder), ("decoder", make_sam_decoder)):
        path = build(models / f"c_sam_{role}.onnx")
        files[role] = {"format": "onnx", "path": path.name, "sha256": file_sha256(path)}
        write_manifest(
            catalog,
            {"name": f"c_sam_{role}", "task": "segmentation", "family": f"mobilesam-{role}",
             "licence": "Apache-2.0", "files": [files[role]]},
        )  # fmt: skip
    write_manifest(
        catalog,
        {"name": "c_sam", "task": "segmentation", "family": "mobilesam", "licence": "Apache-2.0",
         "components": {"encoder": "c_sam_encoder", "decoder": "c_sam_decoder"}},
    )  # fmt: skip
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), np.full((100, 200, 3), 90, np.uint8))
    common = ["--model", "c_sam", "--input", image, "--model-dir", models,
              "--catalog-dir", catalog, "--backend", "onnx:cpu", "--json"]  # fmt: skip
    box = _json_line(edged("infer", "segmentation", *common, "--output", tmp_path / "b.png",
                           "--box", "20,10,120,60"))  # fmt: skip
    assert box["backend"] == "onnx:cpu"
    assert box["meta"]["mask_index"] == 1
    got = cv2.imread(str(tmp_path / "b.png"), cv2.IMREAD_UNCHANGED)
    ys, xs = np.nonzero(got)
    # The decoder grows the box by 16 px of the 1024 frame (scale 5.12): pixel u is inside
    # when 20 - 3.125 < u + 0.5 < 120 + 3.125, i.e. 17 <= u <= 122; rows 7..62 likewise.
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (17, 122, 7, 62)
    pts = _json_line(edged("infer", "segmentation", *common, "--output", tmp_path / "p.png",
                           "--points", "20,10", "120,60,0"))  # fmt: skip
    assert pts["output_shape"] == [100, 200]
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "p.png"), cv2.IMREAD_UNCHANGED), got)


def test_bad_inputs_give_one_line_errors(
    tmp_path: Path, shared_images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process through ``edged.cli.main`` (the same code the subprocess runs), for speed."""
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"definitely not a PNG")
    small_mask = tmp_path / "mask.png"
    cv2.imwrite(str(small_mask), np.zeros((10, 10), np.uint8))
    portrait = shared_images / "portraits" / "astronaut.png"
    cases = [
        (["segmentation", "--input", tmp_path / "missing.png"], "does not exist"),
        (["segmentation", "--input", junk], "not a decodable image"),
        (["inpainting", "--input", portrait, "--mask", small_mask], "mask of the image's size"),
        (["segmentation", "--input", portrait, "--points", "1,2,3,4"], "point"),
        (["segmentation", "--input", portrait, "--param", "novalue"], "key=value"),
        (["segmentation", "--input", portrait, "--output", tmp_path / "x.gif"], ".png or .jpg"),
    ]
    for args, message in cases:
        argv = ["infer", *map(str, args)]
        if "--output" not in argv:
            argv += ["--output", str(tmp_path / "out.png")]
        code = main(argv)
        err = capsys.readouterr().err
        assert code != 0
        assert "Traceback" not in err
        errors = [ln for ln in err.splitlines() if ln.startswith("edged: error:")]
        assert len(errors) == 1, err
        assert message in errors[0]
        assert not (tmp_path / "out.png").exists()


def test_jpeg_output(shared_models: Path, shared_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "blur.jpeg"
    proc = edged(
        "infer", "segmentation", "--input", shared_images / "portraits" / "camera.png",
        "--output", out, "--model-dir", shared_models, "--param", "output=blur",
    )  # fmt: skip
    assert _json_line(proc)["output_shape"] == [512, 512, 3]
    assert out.read_bytes()[:2] == b"\xff\xd8"


def test_one_shot_stderr_is_quiet_and_without_colours_in_a_pipe(
    shared_models: Path, shared_images: Path, tmp_path: Path
) -> None:
    args = [
        "infer", "segmentation", "--model", "selfie_segmentation",
        "--input", shared_images / "portraits" / "zidane.jpg", "--output", tmp_path / "m.png",
        "--model-dir", shared_models,
    ]  # fmt: skip
    quiet = edged(*args)
    _json_line(quiet)
    # No log lines below warning, and not LiteRT's "INFO: Created ... XNNPACK delegate" either.
    assert quiet.stderr == ""
    # Asked for: info logs as console lines, but a pipe gets no ANSI colour codes.
    env = {**os.environ, "EDGED_LOG_FORMAT": "console"}
    chatty = subprocess.run(
        [sys.executable, "-m", "edged", *map(str, args), "--log-level", "info"],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert chatty.returncode == 0, chatty.stderr
    assert "model_loaded" in chatty.stderr
    assert "\x1b[" not in chatty.stderr


def test_in_process_cli_calls_leave_logging_as_they_found_it(tmp_path: Path) -> None:
    before = structlog.get_config()
    assert main(["profile", "--json", "--log-level", "error"]) == 0
    assert main(["config", "show", "--log-level", "debug"]) == 0
    assert structlog.get_config() == before


def test_terminal_summary_is_one_readable_line() -> None:
    line = {
        "task": "segmentation", "model": "selfie", "backend": "litert:xnnpack",
        "input_shape": [720, 1280, 3], "output_shape": [720, 1280],
        "latency_ms": {"pre": 1.25, "run": 5.0, "post": 11.5, "total": 70.9},
    }  # fmt: skip
    assert summary(line, Path("m.png")) == (
        "segmentation: selfie on litert:xnnpack, 720x1280x3 -> 720x1280 in 70.9 ms "
        "(pre 1.2, run 5.0, post 11.5); wrote m.png"
    )
