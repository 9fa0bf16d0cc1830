"""Typed task parameters (edged.tasks.params): bad values are bad_request, never internal.

Issue #15 item 6: ``radius: "nan"``, ``activation_bytes_per_px: "x"``, ``seed: -1`` and
``max_det: "inf"`` used to raise ValueError/OverflowError inside tasks and answer
``internal``. Checked through the running daemon over real ZeroMQ, then case by case on the
Engine (the path ``edged infer``, the inbox and streams share: Engine.run -> run_task).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.cli.infer_cmd import parse_params
from edged.config import Settings
from edged.engine import Engine
from edged.errors import BadRequest, EdgedError
from edged.tasks.base import TaskRequest
from edged.tasks.params import (
    MIN_TILE,
    GenerationParams,
    InpaintingParams,
    SegmentationParams,
    SuperresParams,
    validate_params,
)
from edged.testing import make_tiny_sd_dir
from edged.testing.daemon import Daemon, toml_config
from edged.wire.client import Client

IMAGE = np.full((32, 32, 3), 120, np.uint8)
REPORTED = [
    ("segmentation", "selfie_segmentation", {"output": "blur", "radius": "nan"}, "radius"),
    ("superres", "espcn_x2", {"activation_bytes_per_px": "x"}, "activation_bytes_per_px"),
    ("generation", "tiny_sd", {"seed": -1}, "seed"),
    ("segmentation", "yolov8n_seg", {"max_det": "inf"}, "max_det"),
]
"""The four cases of issue #15 item 6: (task, model, params, the parameter the error names)."""


def _code(exc: EdgedError) -> str:
    return exc.wire_code


def test_reported_cases_are_bad_request_through_the_daemon(
    tmp_path: Path, shared_models: Path
) -> None:
    models = tmp_path / "models"
    make_tiny_sd_dir(models / "tiny_sd")
    work = tmp_path / "d"
    work.mkdir()
    config = toml_config(work / "edged.toml", shared_models, [])
    text = config.read_text().replace("model_dirs = [", f'model_dirs = ["{models}", ', 1)
    config.write_text(text)
    with Daemon(config, work) as daemon, Client(daemon.requests_endpoint, timeout_s=60) as client:
        for task, model, params, name in REPORTED:
            image = None if task == "generation" else IMAGE
            with pytest.raises(BadRequest) as info:
                client.request(task, image, model=model, prompt="a cat", params=params)
            assert _code(info.value) == "bad_request", (task, params)
            message = str(info.value)
            assert f"params.{name}" in message
            assert "\n" not in message
        # The same tasks with good values still run (and the daemon is alive to answer).
        ok = client.request("segmentation", IMAGE, params={"output": "blur", "radius": 5})
        assert ok.header["ok"] is True
        gen = {"seed": 7, "width": 64, "height": 64, "steps": 1}
        image = client.request("generation", model="tiny_sd", prompt="a cat", params=gen)
        assert image.outputs["image"].shape == (64, 64, 3)
        assert daemon.alive()


@pytest.mark.parametrize(
    ("task", "params", "says"),
    [
        (
            "segmentation",
            {"output": "blur", "radius": "nan"},
            "params.radius 'nan': expected a finite number in 3..201",
        ),
        ("segmentation", {"radius": float("inf")}, "params.radius inf"),
        ("segmentation", {"opacity": 1.5}, "params.opacity 1.5: expected a finite number in 0..1"),
        (
            "segmentation",
            {"max_det": "inf"},
            "params.max_det 'inf': expected an integer in 1..1000",
        ),
        ("segmentation", {"max_det": True}, "params.max_det True"),
        ("segmentation", {"conf": "NaN"}, "params.conf"),
        ("segmentation", {"output": "sparkles"}, "one of mask, cutout, overlay, blur, replace"),
        (
            "segmentation",
            {"background": "red-ish"},
            "params.background 'red-ish': expected a colour",
        ),
        ("segmentation", {"classes": [-1]}, "params.classes"),
        ("segmentation", {"typo": 1}, "params.typo: segmentation has no such parameter"),
        (
            "superres",
            {"activation_bytes_per_px": "x"},
            "params.activation_bytes_per_px is the model's",
        ),
        ("superres", {"activation_bytes_per_px": 1}, "not a request parameter"),
        ("superres", {"tile": 0}, f"params.tile 0: expected an integer in {MIN_TILE}..4096"),
        ("superres", {"tile": 1, "halo": 0}, "params.tile 1"),
        ("superres", {"tile": 64.0}, "params.tile 64.0"),
        ("superres", {"halo": 10_000}, "params.halo 10000: expected an integer in 0..64"),
        ("inpainting", {"radius": 0}, "params.radius 0: expected a finite number > 0 and <= 64"),
        ("inpainting", {"method": "magic"}, "params.method 'magic': expected one of telea, ns"),
        ("inpainting", {"context": -1}, "params.context -1"),
        ("generation", {"seed": -1}, "params.seed -1: expected an integer in 0..4294967295"),
        ("generation", {"seed": 2**40}, "params.seed"),
        ("generation", {"steps": 10**6}, "params.steps 1000000: expected an integer in 1..1000"),
        ("generation", {"guidance_scale": "nan"}, "params.guidance_scale"),
        ("generation", {"lora_scale": 1e309}, "params.lora_scale inf"),
        ("generation", {"width": -64}, "params.width -64"),
        ("generation", {"scheduler": "ddim"}, "params.scheduler 'ddim'"),
        ("text_encode", {"model_dir": 5}, "params.model_dir 5"),
    ],
)
def test_bad_values_are_one_line_bad_requests_naming_the_parameter(
    task: str, params: dict[str, Any], says: str
) -> None:
    # A model that does not exist: the parameters are refused before any model is looked up.
    engine = Engine(Settings())
    try:
        with pytest.raises(BadRequest) as info:
            engine.run(TaskRequest(task, "no_such_model", image=IMAGE, prompt="a", params=params))
    finally:
        engine.close()
    assert _code(info.value) == "bad_request"
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_what_the_cli_sends_is_still_accepted() -> None:
    """``--param k=v``: JSON values, else text; decimal text is a number, 'nan'/'inf' are not."""
    seg = validate_params(
        "segmentation",
        parse_params(["output=overlay", "opacity=.5", "color=255,0,0", "classes=person,bus"]),
    )
    assert isinstance(seg, SegmentationParams)
    assert (seg.output, seg.opacity, seg.color, seg.classes) == (
        "overlay",
        0.5,
        (255, 0, 0),
        "person,bus",
    )
    assert validate_params("segmentation", parse_params(["classes=15", "max_det=7"])) == (
        SegmentationParams(classes=15, max_det=7)
    )
    sr = validate_params("superres", parse_params(["tile=256", "halo=24"]))
    assert sr == SuperresParams(tile=256, halo=24)
    assert SuperresParams(overlap=8).effective_halo == 8
    gen = validate_params("generation", parse_params(["steps=2", "seed=42", "lora_scale=0.5"]))
    assert isinstance(gen, GenerationParams)
    assert (gen.steps, gen.seed, gen.lora_scale) == (2, 42, 0.5)
    assert validate_params("inpainting", {"method": "NS", "radius": "5"}) == InpaintingParams(
        method="ns", radius=5.0
    )
    for text in ("nan", "inf", "Infinity", "1e999", "0x10", "5px"):
        with pytest.raises(BadRequest, match=r"params\.radius"):
            validate_params("segmentation", parse_params([f"radius={text}"]))


def test_params_must_be_an_object() -> None:
    with pytest.raises(BadRequest, match="params must be an object"):
        validate_params("segmentation", [1, 2])  # type: ignore[arg-type]
    assert validate_params("unknown_task", {"x": 1}) is None
