"""Test helpers: superres / inpainting: generated models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edged.testing.models import _onnx, save_model


def make_upscale_model(
    path: Path,
    scale: int,
    *,
    channels: int = 3,
    input_layout: str = "NCHW",
    fixed: tuple[int, int] | None = None,
    input_name: str = "input",
    output_name: str = "output",
) -> Path:
    """Nearest-neighbour x``scale`` upscaler (Tile + DepthToSpace), NCHW output.

    ``input_layout="NHWC"`` adds a leading transpose (like the shared ESPCN graphs);
    ``fixed=(h, w)`` gives a static input size (like XLSR's 128x128).
    """
    onnx = _onnx()
    h, tp = onnx.helper, onnx.TensorProto
    hh, ww = fixed if fixed is not None else ("H", "W")
    nodes, src = [], input_name
    if input_layout == "NHWC":
        in_shape: list[int | str] = [1, hh, ww, channels]
        nodes.append(h.make_node("Transpose", [input_name], ["nchw"], perm=[0, 3, 1, 2]))
        src = "nchw"
    else:
        in_shape = [1, channels, hh, ww]
    # DepthToSpace (DCR) reads channel c*s*s + k as sub-pixel k of channel c after Tile, so
    # repeat each channel s*s times in a row: reshape to [1,C,1,H,W], tile, reshape back.
    nodes += [
        h.make_node("Unsqueeze", [src, "ax2"], ["u"]),
        h.make_node("Tile", ["u", "reps"], ["t"]),
        h.make_node("Shape", [src], ["shp"]),
        h.make_node("Gather", ["shp", "hw_idx"], ["hw"]),
        h.make_node("Concat", ["c_out", "hw"], ["new_shape"], axis=0),
        h.make_node("Reshape", ["t", "new_shape"], ["r"]),
        h.make_node("DepthToSpace", ["r"], [output_name], blocksize=scale, mode="CRD"),
    ]
    out_h = hh * scale if isinstance(hh, int) else "sH"
    out_w = ww * scale if isinstance(ww, int) else "sW"
    graph = h.make_graph(
        nodes,
        "upscale",
        [h.make_tensor_value_info(input_name, tp.FLOAT, in_shape)],
        [h.make_tensor_value_info(output_name, tp.FLOAT, [1, channels, out_h, out_w])],
        initializer=[
            h.make_tensor("ax2", tp.INT64, [1], [2]),
            h.make_tensor("reps", tp.INT64, [5], [1, 1, scale * scale, 1, 1]),
            h.make_tensor("hw_idx", tp.INT64, [2], [2, 3]),
            h.make_tensor("c_out", tp.INT64, [2], [1, channels * scale * scale]),
        ],
    )
    return save_model(graph, path)


INPAINT_SIZE = 512


def inpaint_pattern(size: int = INPAINT_SIZE) -> np.ndarray:
    """The H x W x 3 uint8 picture the generated inpainting models paint into holes.

    Every pixel says where it is: R = x mod 256, G = y mod 256, B encodes the 256-block.
    """
    y, x = np.mgrid[0:size, 0:size]
    blue = 30 + 40 * (x // 256) + 80 * (y // 256)
    return np.stack([x % 256, y % 256, blue], axis=-1).astype(np.uint8)


def make_inpaint_model(path: Path, family: str = "lama", size: int = INPAINT_SIZE) -> Path:
    """An inpainting model with the real IO of ``family`` that paints ``inpaint_pattern``.

    lama: ``image`` [1,3,S,S] 0..1 + ``mask`` [1,1,S,S] (1 = hole) -> ``output`` 0..1 =
    image outside the hole, pattern inside. migan: ``input`` [1,4,S,S] = [keep - 0.5,
    image*keep] with image -1..1 -> ``output`` [1,3,S,S] -1..1, same rule. A wrong mask
    convention therefore shows up as pattern outside / image inside the hole.
    """
    onnx = _onnx()
    h, tp, nh = onnx.helper, onnx.TensorProto, onnx.numpy_helper
    pattern = inpaint_pattern(size).transpose(2, 0, 1)[None].astype(np.float32)
    if family == "lama":
        nodes = [
            h.make_node("Sub", ["one", "mask"], ["keep"]),
            h.make_node("Mul", ["image", "keep"], ["kept"]),
            h.make_node("Mul", ["pattern", "mask"], ["painted"]),
            h.make_node("Add", ["kept", "painted"], ["output"]),
        ]
        inputs = [
            h.make_tensor_value_info("image", tp.FLOAT, [1, 3, size, size]),
            h.make_tensor_value_info("mask", tp.FLOAT, [1, 1, size, size]),
        ]
        pattern = pattern / 255.0
    elif family == "migan":
        nodes = [
            h.make_node("Split", ["input", "split"], ["m", "img"], axis=1),
            h.make_node("Sub", ["half", "m"], ["hole"]),  # keep-0.5 -> hole = 0.5-(keep-0.5)
            h.make_node("Mul", ["pattern", "hole"], ["painted"]),
            h.make_node("Add", ["img", "painted"], ["output"]),
        ]
        inputs = [h.make_tensor_value_info("input", tp.FLOAT, [1, 4, size, size])]
        pattern = pattern / 127.5 - 1.0
    else:
        raise ValueError(f"unknown inpainting family {family!r}")
    graph = h.make_graph(
        nodes,
        f"fake_{family}",
        inputs,
        [h.make_tensor_value_info("output", tp.FLOAT, [1, 3, size, size])],
        initializer=[
            nh.from_array(pattern.astype(np.float32), "pattern"),
            nh.from_array(np.array(1.0, np.float32), "one"),
            nh.from_array(np.array(0.5, np.float32), "half"),
            nh.from_array(np.array([1, 3], np.int64), "split"),
        ],
    )
    return save_model(graph, path)


def y_psnr(out: np.ndarray, ref: np.ndarray, border: int) -> float:
    """PSNR on studio-range Y (MATLAB rgb2ycbcr, as SR papers score), ``border`` px cropped."""

    def y(rgb: np.ndarray) -> np.ndarray:
        r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
        return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0

    diff = (y(out) - y(ref))[border:-border, border:-border]
    return float(10 * np.log10(255.0**2 / float(np.mean(diff**2))))


def set5_pairs(images_dir: Path, scale: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(LR, HR) RGB pairs of Set5: HR cropped to a multiple of ``scale``, LR by INTER_CUBIC."""
    import cv2

    pairs = []
    for path in sorted((images_dir / "set5" / "HR").glob("*.png")):
        bgr = cv2.imread(str(path))
        if bgr is None:
            raise FileNotFoundError(f"cannot read {path}")
        hr = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
        hr = np.ascontiguousarray(hr[:h, :w])
        lr = cv2.resize(hr, (w // scale, h // scale), interpolation=cv2.INTER_CUBIC)
        pairs.append((lr, hr))
    return pairs


def set5_score(
    engine: Any,
    model: str | None,
    pairs: list[tuple[np.ndarray, np.ndarray]],
    scale: int,
    **params: Any,
) -> float:
    """Mean Y-PSNR of ``model`` through ``engine.run`` (the task path) over ``pairs``."""
    from edged.tasks.base import TaskRequest

    scores = []
    for lr, hr in pairs:
        result = engine.run(TaskRequest(task="superres", model=model, image=lr, params=params))
        out = result.outputs["image"]
        if out.shape != hr.shape or out.dtype != np.uint8:
            raise AssertionError(
                f"superres output {out.shape} {out.dtype}, expected {hr.shape} uint8"
            )
        scores.append(y_psnr(out, hr, scale))
    return float(np.mean(scores))


def make_conv_sr_model(path: Path, scale: int = 2, *, outlier: float = 0.0, seed: int = 0) -> Path:
    """A tiny ESPCN-shaped sr-y model: NHWC Y in, Conv-Relu-Conv-DepthToSpace, NCHW out.

    Channel 0 carries the image (nearest-neighbour upscaling) and small random channels
    make it a real conv net. ``outlier`` > 0 adds a hidden channel of ``outlier * x`` that
    the second conv ignores: per-tensor int8 activations then spend their range on it and
    the image channel is lost -- a model static int8 quantization must ruin.
    """
    onnx = _onnx()
    h, tp = onnx.helper, onnx.TensorProto
    rng = np.random.default_rng(seed)
    mid = 4
    w1 = (rng.standard_normal((mid, 1, 3, 3)) * 0.01).astype(np.float32)
    w1[0, 0, 1, 1] = 1.0
    w1[1] = 0.0
    w1[1, 0, 1, 1] = outlier
    w2 = (rng.standard_normal((scale * scale, mid, 3, 3)) * 0.002).astype(np.float32)
    w2[:, 0, 1, 1] += 1.0
    w2[:, 1] = 0.0
    nodes = [
        h.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        h.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        h.make_node("Relu", ["c1"], ["r1"]),
        h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        h.make_node("DepthToSpace", ["c2"], ["output"], blocksize=scale, mode="DCR"),
    ]
    graph = h.make_graph(
        nodes,
        "conv_sr",
        [h.make_tensor_value_info("input", tp.FLOAT, [1, "H", "W", 1])],
        [h.make_tensor_value_info("output", tp.FLOAT, [1, 1, "sH", "sW"])],
        initializer=[
            onnx.numpy_helper.from_array(w1, "w1"),
            onnx.numpy_helper.from_array(np.zeros(mid, np.float32), "b1"),
            onnx.numpy_helper.from_array(w2, "w2"),
            onnx.numpy_helper.from_array(np.zeros(scale * scale, np.float32), "b2"),
        ],
    )
    return save_model(graph, path)
