"""Seeded request generator for ``edged bench fuzz`` (and the reliability tests).

Each ``Case`` is the frames of one request plus what a correct reply must echo. Kinds:
``builtin`` (ping/stats/models), ``bytes`` (any frames), ``json`` (any JSON value),
``header`` (a valid header with one field broken), ``image`` (a task request whose payloads
are valid, truncated, bit-flipped, bombs, odd sizes, raw/npy of random shape and dtype, masks
of the wrong size), ``prompt`` (generation/text_encode with prompts of any length and
script, and model names that look like paths), ``big`` (a frame above ``max_frame_bytes``).
"""

from __future__ import annotations

import io
import json
import random
import string
from dataclasses import dataclass
from typing import Any

import numpy as np

TASKS = ["segmentation", "superres", "inpainting", "generation", "text_encode"]
MODELS = [None, "selfie_segmentation", "edged_sr_x2", "opencv_telea", "opencv_ns", "espcn_x2"]
# Model names that look like paths: the daemon must refuse them, never open them.
ODD_MODELS = [
    "",
    "../../etc/passwd",
    "/etc",
    "/tmp",  # noqa: S108 - a path the daemon must refuse
    "x" * 200,
    "nope",
    "sd_turbo",
    "yolov8n_seg",
]
DTYPES = ["uint8", "int8", "uint16", "int16", "float16", "float32", "float64", "bool", "int64"]
WEIRD_DTYPES = ["object", "<U4", "complex64", "V8", "", "uint8 ", "float128", "S3"]
PARAM_KEYS = [
    *("radius", "method", "context", "min_window", "tile", "halo", "overlap", "scale"),
    *("threshold", "output", "opacity", "color", "background", "classes", "encoding"),
]
SMALL_GEN = {"steps": 1, "width": 64, "height": 64}
"""Generation params that keep a fuzzed request cheap (the tiny model ``tiny`` is real)."""
GEN_PARAMS: list[dict[str, Any]] = [
    {},
    {},
    {"model_dir": "/etc"},
    {"decoder": "/etc/passwd.onnx"},
    {"decoder": "taesd"},
    {"steps": "many"},
    {"steps": -1},
    {"width": 10**9},
    {"width": 65, "height": 63},
    {"guidance_scale": "x"},
    {"seed": 2**80},
    {"negative_prompt": "\ud800" * 9},
    {"residency": "nowhere"},
]
KINDS = ["builtin", "bytes", "json", "header", "image", "image", "image", "image", "prompt"]


@dataclass
class Case:
    kind: str
    frames: list[bytes]
    request_id: str | None
    """The id the reply must carry (None when the header is not a readable object)."""
    delimiter: bool


class CaseGenerator:
    def __init__(self, seed: int, *, max_frame_bytes: int, max_pixels: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
        self.np = np.random.default_rng(seed)
        self.max_frame_bytes = max_frame_bytes
        self.max_pixels = max_pixels
        self.count = 0
        self._images = [self._image(h, w) for h, w in [(1, 1), (1, 17), (8, 8), (24, 31), (48, 40)]]

    # ------------------------------------------------------------ top level

    def next(self) -> Case:
        self.count += 1
        rid = f"f{self.count}"
        roll = self.rng.random()
        kind = "big" if roll < 0.005 else self.rng.choice(KINDS)
        build = {
            "builtin": self._builtin,
            "bytes": self._bytes,
            "json": self._json,
            "header": self._header_frames,
            "image": self._image_case,
            "prompt": self._prompt_case,
            "big": self._big,
        }[kind]
        frames, rid_out = build(rid)
        if rid_out is not None:
            rid_out = _expected_id(frames[0])
        return Case(kind, frames, rid_out, self.rng.random() < 0.5)

    def _header(self, rid: str, task: str, **fields: Any) -> dict[str, Any]:
        return {"v": 1, "id": rid, "task": task, **fields}

    def _builtin(self, rid: str) -> tuple[list[bytes], str | None]:
        task = self.rng.choice(["ping", "stats", "models"])
        return [json.dumps(self._header(rid, task)).encode()], rid

    def _bytes(self, rid: str) -> tuple[list[bytes], str | None]:
        n = self.rng.choice([0, 1, 1, 2, 3, 6])
        frames = [self.rng.randbytes(self.rng.choice([0, 1, 7, 64, 1000])) for _ in range(n)]
        if n == 0:
            frames = [b""]  # a lone empty frame: a delimiter with no body
        return frames, None

    def _json(self, rid: str) -> tuple[list[bytes], str | None]:
        value = self._any_json(3)
        text = json.dumps(value, ensure_ascii=self.rng.random() < 0.5)
        extra = [self.rng.randbytes(10) for _ in range(self.rng.choice([0, 0, 1, 3]))]
        rid_out = value["id"] if isinstance(value, dict) and _readable_id(value.get("id")) else None
        return [text.encode("utf-8", "surrogatepass"), *extra], rid_out

    def _any_json(self, depth: int) -> Any:
        choices: list[Any] = [
            None,
            True,
            self.rng.randint(-(2**70), 2**70),
            self.rng.random() * 1e300,
            self._text(self.rng.choice([0, 3, 50])),
        ]
        if depth > 0:
            choices.append([self._any_json(depth - 1) for _ in range(self.rng.randint(0, 4))])
            keys = ["v", "id", "task", "model", "params", "payloads", "prompt", "points", "box"]
            obj = {
                self.rng.choice([*keys, self._text(4)]): self._any_json(depth - 1)
                for _ in range(self.rng.randint(0, 6))
            }
            choices += [obj, obj]
        return self.rng.choice(choices)

    def _text(self, n: int) -> str:
        alphabets = [
            string.printable,
            "äöüßéèê",
            "日本語テキスト",
            "🙂🚀👩‍🚀",
            "\x00\x01\u200b\u202e",
            "\ud800\udfff",  # lone surrogates (encoded with surrogatepass: invalid UTF-8)
        ]
        alphabet = self.rng.choice(alphabets)
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    # ------------------------------------------------------------ broken headers

    def _header_case(self, rid: str) -> dict[str, Any]:
        task = self.rng.choice(TASKS)
        header = self._header(rid, task, model=self.rng.choice(MODELS))
        breakage = self.rng.choice(
            [
                "v",
                "id",
                "task",
                "unknown",
                "params",
                "payloads",
                "points",
                "box",
                "encoding",
                "backend",
                "model",
                "frames",
            ]
        )
        junk = self._any_json(1)
        if breakage == "v":
            header["v"] = self.rng.choice([0, 2, "1", 1.0, None, True])
        elif breakage == "id":
            header["id"] = self.rng.choice([7, "", "x" * 129, None, ["a"]])
        elif breakage == "task":
            header["task"] = self.rng.choice(["", "SEGMENTATION", "shell", 3, self._text(8)])
        elif breakage == "unknown":
            header[self._text(6) or "x"] = junk
        elif breakage == "params":
            header["params"] = self.rng.choice([junk, {self._text(5): junk}, {"radius": -1e9}])
        elif breakage == "payloads":
            header["payloads"] = self.rng.choice(
                [junk, [{"name": "image"}] * 3, [{"name": "other", "encoding": "png"}]]
            )
        elif breakage == "points":
            header["points"] = self.rng.choice([[[1, 2]], [[1, 2, 3]] * 300, [["a", 1, 1]]])
        elif breakage == "box":
            header["box"] = self.rng.choice([[1, 2, 3], [float("nan")] * 4, "box"])
        elif breakage == "encoding":
            header["encoding"] = self.rng.choice(["gif", 1, "PNG"])
        elif breakage == "backend":
            header["backend"] = self.rng.choice(["onnx:tpu", "x" * 40, "", "litert:xnnpack"])
        elif breakage == "model":
            header["model"] = self.rng.choice(ODD_MODELS)
        return header

    def _header_frames(self, rid: str) -> tuple[list[bytes], str | None]:
        header = self._header_case(rid)
        extra = [self.rng.randbytes(5) for _ in range(self.rng.choice([0, 1, 2]))]
        text = json.dumps(header, allow_nan=True).encode()
        return [text, *extra], rid if _readable_id(header.get("id")) else None

    # ------------------------------------------------------------ images

    def _image(self, h: int, w: int) -> np.ndarray[Any, Any]:
        return self.np.integers(0, 256, (h, w, 3), dtype=np.uint8)

    def _encode(self, arr: np.ndarray[Any, Any], encoding: str) -> bytes:
        import cv2

        ext = ".png" if encoding == "png" else ".jpg"
        ok, buf = cv2.imencode(ext, arr)
        assert ok
        return bytes(buf.tobytes())

    def _payload(  # noqa: PLR0911 - one return per mutation reads best
        self, name: str, shape: tuple[int, int]
    ) -> tuple[dict[str, Any], bytes]:
        """One payload, valid or broken in one of many ways."""
        h, w = shape
        channels = 3 if name == "image" else 1
        base = self._image(h, w)[:, :, :channels]
        if channels == 1:
            base = base[:, :, 0]
        how = self.rng.choice(
            [
                "png",
                "jpeg",
                "png",
                "truncate",
                "flip",
                "bomb",
                "gray",
                "rgba16",
                "raw",
                "raw_bad",
                "npy",
                "npy_bad",
                "empty",
                "garbage",
            ]
        )
        spec: dict[str, Any] = {"name": name, "encoding": "png"}
        if how in ("png", "jpeg"):
            spec["encoding"] = how
            return spec, self._encode(base, how)
        if how == "truncate":
            data = self._encode(base, "png")
            return spec, data[: self.rng.randint(0, len(data) - 1)]
        if how == "flip":
            flipped = bytearray(self._encode(base, self.rng.choice(["png", "jpeg"])))
            for _ in range(self.rng.randint(1, 8)):
                flipped[self.rng.randrange(len(flipped))] ^= 1 << self.rng.randrange(8)
            spec["encoding"] = self.rng.choice(["png", "jpeg"])
            return spec, bytes(flipped)
        if how == "bomb":
            from edged.testing import png_bomb

            side = self.rng.choice([600, 5000, 100_000, 2**31 - 1])
            return spec, png_bomb(side, self.rng.choice([1, side]))
        if how == "gray":
            return spec, self._encode(base if channels == 1 else base[:, :, 0], "png")
        if how == "rgba16":
            deep = np.dstack([base.astype(np.uint16) * 257] * (4 if channels == 1 else 1))
            return spec, self._encode(deep[:, :, :4] if deep.ndim == 3 else deep, "png")
        if how in ("raw", "raw_bad"):
            return self._raw(base, spec, broken=how == "raw_bad")
        if how in ("npy", "npy_bad"):
            return self._npy(base, spec, broken=how == "npy_bad")
        if how == "empty":
            return spec, b""
        spec["encoding"] = self.rng.choice(["png", "jpeg", "npy", "raw"])
        return spec, self.rng.randbytes(self.rng.choice([1, 30, 500]))

    def _raw(
        self, base: np.ndarray[Any, Any], spec: dict[str, Any], *, broken: bool
    ) -> tuple[dict[str, Any], bytes]:
        spec["encoding"] = "raw"
        arr = base
        if broken:
            dtype = self.rng.choice(DTYPES + WEIRD_DTYPES)
            spec["dtype"] = dtype
            spec["shape"] = self.rng.choice(
                [
                    [*base.shape[:2], 5],
                    [0, 0, 3],
                    [base.size],
                    [1, 1, 1, 1],
                    [2**20, 2**20, 3],
                    list(base.shape),
                ]
            )
            data = base.tobytes()
            return spec, data[: self.rng.randint(0, len(data))]
        spec["shape"], spec["dtype"] = list(arr.shape), str(arr.dtype)
        return spec, arr.tobytes()

    def _npy(
        self, base: np.ndarray[Any, Any], spec: dict[str, Any], *, broken: bool
    ) -> tuple[dict[str, Any], bytes]:
        spec["encoding"] = "npy"
        arr: np.ndarray[Any, Any] = base
        if broken:
            dtype = self.rng.choice([*DTYPES, "object", "complex64"])
            shape = self.rng.choice([(3,), (2, 2, 2, 2), base.shape[:2], (*base.shape[:2], 4)])
            arr = (
                np.zeros(shape, dtype=dtype) if dtype != "object" else np.array([{"a": 1}], object)
            )
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=arr.dtype == object)
        data = buf.getvalue()
        if broken and self.rng.random() < 0.3:
            data = data[: self.rng.randint(0, len(data))]
        return spec, data

    def _image_case(self, rid: str) -> tuple[list[bytes], str | None]:
        task = self.rng.choice(["segmentation", "superres", "inpainting", "inpainting"])
        h, w = self.rng.choice([(1, 1), (1, 17), (8, 8), (24, 31), (48, 40), (33, 2)])
        specs, frames = [], []
        names = ["image", "mask"] if task == "inpainting" else ["image"]
        if self.rng.random() < 0.1:
            names = self.rng.choice([[], ["mask"], ["image", "image"], ["mask", "image"]])
        for name in names:
            shape = (h, w)
            if name == "mask" and self.rng.random() < 0.3:
                shape = (max(1, h + self.rng.choice([-1, 1, 5])), w)  # wrong-size mask
            spec, data = self._payload(name, shape)
            specs.append(spec)
            frames.append(data)
        params: dict[str, Any] = {}
        if self.rng.random() < 0.2:
            key = self.rng.choice(PARAM_KEYS)
            params = {key: self.rng.choice([self._any_json(0), self._any_json(1), -1, 0, 10**9])}
        header = self._header(
            rid, task, model=self.rng.choice(MODELS), params=params, payloads=specs
        )
        if self.rng.random() < 0.1:
            frames = frames[: self.rng.randint(0, len(frames))] or [*frames, b"extra"]
        return [json.dumps(header).encode(), *frames], rid

    def _prompt_case(self, rid: str) -> tuple[list[bytes], str | None]:
        n = self.rng.choice([0, 1, 77, 300, 4096, 4097, 20_000])
        task = self.rng.choice(["generation", "text_encode"])
        # text_encode takes only model_dir: generation's size params would be refused (typed).
        params = {**SMALL_GEN, **self.rng.choice(GEN_PARAMS)} if task == "generation" else {}
        header = self._header(
            rid,
            task,
            model=self.rng.choice([None, *ODD_MODELS[1:5], "sd_turbo", "tiny", "tiny", "tiny"]),
            prompt=self._text(n),
            params=params,
        )
        data = json.dumps(header, ensure_ascii=False).encode("utf-8", "surrogatepass")
        return [data], rid if len(data) <= 65536 else None

    def _big(self, rid: str) -> tuple[list[bytes], str | None]:
        size = self.rng.randint(self.max_frame_bytes + 1, int(self.max_frame_bytes * 1.5))
        header = self._header(rid, "segmentation", payloads=[{"name": "image", "encoding": "png"}])
        return [json.dumps(header).encode(), b"\0" * size], rid


def _expected_id(header: bytes) -> str | None:
    """The id a server must echo: the header's ``id`` as JSON decodes it (an escaped
    surrogate pair is one code point), or None when the header is not UTF-8 JSON."""
    try:
        value = json.loads(header.decode("utf-8"))
    except ValueError:
        return None
    if isinstance(value, dict) and _readable_id(value.get("id")):
        return str(value["id"])
    return None


def _readable_id(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 128
