"""LoRA adapters merged into the UNet's weights at load, switchable per request.

A request names an adapter (``params.lora``: NAME for ``<model dir>/loras/NAME.safetensors``,
or an absolute path that resolves, symlinks followed, inside ``<model dir>/loras`` or a
``model_dirs`` entry) and ``params.lora_scale`` (default 1). Files over
``generation.lora_max_bytes`` are refused (``too_large``) before they are read, and errors
name the file, never its content. The base ONNX file is never rewritten: for every weight the
adapter targets, ``W + scale * alpha/r * up @ down`` is computed once and written into a
sidecar model under ``{cache_dir}/lora`` (an LRU of ``generation.lora_cache_entries``). The
merged session is its own pool entry (key includes the adapter's sha256 and the scale), so
the base session stays valid: a request without ``lora`` uses it ("unmerge" is just not using
the merged one), and the pool evicts whichever is older.

Keys understood: PEFT/diffusers (``<module>.lora_A.weight`` / ``lora_B.weight``), older
diffusers (``<module>.lora.down.weight`` / ``lora.up.weight``) and kohya
(``lora_unet_<module>.lora_down.weight`` / ``lora_up.weight`` / ``.alpha``). A module is
matched to the node whose exported name is its path (``/down_blocks.0/.../to_q/MatMul``) and
whose weight is an initializer (MatMul ``[in, out]``, Gemm, Conv). Every adapter module must
match, and the targeted weights must be float: nothing is applied partly or silently.
Needs ``onnx`` to read the graph (``pip install edged[quantize]``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edged.errors import BackendUnavailable, BadRequest, TooLarge
from edged.tasks.generation.lora_cache import SidecarCache

if TYPE_CHECKING:
    from edged.engine import Engine

__all__ = ["Adapter", "LoraChoice", "choose", "merged_model", "read_safetensors", "resolve"]
F32 = npt.NDArray[np.float32]
DEFAULT_MAX_BYTES = 512_000_000
MAX_HEADER = 100_000_000
"""The safetensors format's own limit on the JSON header."""
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}
_SUFFIXES = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_down.weight", ".lora_up.weight"),
)
_PREFIXES = ("base_model.model.", "unet.", "lora_unet_")
_WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
LoraWeights = tuple[F32, F32, float | None]
"""(down [r, in, ...], up [out, r, ...], alpha or None)"""


def read_safetensors(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, F32]:
    """Every tensor of a ``.safetensors`` file as float32 (the format is a JSON header + raw)."""
    return parse_safetensors(path.name, read_limited(path, max_bytes))


def read_limited(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked before reading)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise BadRequest(f"lora {path.name}: cannot open it ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BadRequest(f"lora {path.name}: not a regular file")
        if info.st_size > max_bytes:
            raise TooLarge(
                f"lora {path.name} is {info.st_size} bytes; "
                f"generation.lora_max_bytes is {max_bytes}"
            )
        blob = file.read(max_bytes + 1)
    if len(blob) > max_bytes:  # grew while we read it
        raise TooLarge(f"lora {path.name}: over generation.lora_max_bytes ({max_bytes})")
    return blob


def parse_safetensors(name: str, blob: bytes) -> dict[str, F32]:
    """Decode a safetensors blob; errors say what is wrong, never echo the bytes."""
    fail = f"lora {name}: not a valid .safetensors file"
    if len(blob) < 8:
        raise BadRequest(f"{fail} (too short)")
    size = int.from_bytes(blob[:8], "little")
    if size > min(len(blob) - 8, MAX_HEADER):
        raise BadRequest(f"{fail} (header size out of range)")
    try:
        header = json.loads(blob[8 : 8 + size])
    except (ValueError, RecursionError):
        raise BadRequest(f"{fail} (header is not JSON)") from None
    if not isinstance(header, dict):
        raise BadRequest(f"{fail} (header is not an object)")
    data = memoryview(blob)[8 + size :]
    out: dict[str, F32] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        out[key] = _tensor(fail, info, data)
    return out


def _tensor(fail: str, info: Any, data: memoryview) -> F32:
    if not isinstance(info, dict) or info.get("dtype") not in _DTYPES:
        raise BadRequest(f"{fail} (a tensor has an unsupported dtype; F32, F16, F64 or BF16)")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not (
        isinstance(shape, list)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(v) is int and v >= 0 for v in [*shape, *offsets])
        and offsets[0] <= offsets[1] <= len(data)
    ):
        raise BadRequest(f"{fail} (a tensor's shape or offsets are malformed)")
    dtype = _DTYPES[info["dtype"]]
    start, end = offsets
    if end - start != math.prod(shape) * np.dtype(dtype).itemsize:
        raise BadRequest(f"{fail} (a tensor's size does not match its shape)")
    raw = np.frombuffer(data[start:end], dtype=dtype)
    if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
        raw = (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32).reshape(shape)


def _module(key: str, suffix: str) -> str:
    name = key[: -len(suffix)]
    for prefix in _PREFIXES:
        name = name.removeprefix(prefix)
    return name.replace(".", "_").replace("/", "_")


@dataclass(frozen=True)
class Adapter:
    """module (normalised with ``_``) -> (down [r, ...], up [out, r, ...], alpha or None)."""

    path: Path
    sha256: str
    modules: dict[str, LoraWeights]

    @classmethod
    def load(cls, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Adapter:
        blob = read_limited(path, max_bytes)
        tensors = parse_safetensors(path.name, blob)
        modules: dict[str, LoraWeights] = {}
        for key in tensors:
            for down_suffix, up_suffix in _SUFFIXES:
                if key.endswith(down_suffix):
                    up_key = key[: -len(down_suffix)] + up_suffix
                    if up_key not in tensors:
                        raise BadRequest(f"lora {path.name}: a down weight has no {up_suffix}")
                    alpha = tensors.get(key[: -len(down_suffix)] + ".alpha")
                    modules[_module(key, down_suffix)] = (
                        tensors[key],
                        tensors[up_key],
                        None if alpha is None else float(alpha.reshape(-1)[0]),
                    )
        if not modules:
            raise BadRequest(f"lora {path.name}: no LoRA down/up weight pairs in it")
        return cls(path, hashlib.sha256(blob).hexdigest(), modules)


def _node_module(name: str) -> str:
    """``/m/down_blocks.0/attn1/to_q/MatMul`` -> ``m_down_blocks_0_attn1_to_q``."""
    parts = [p for p in name.split("/") if p][:-1]
    return "_".join(parts).replace(".", "_")


@lru_cache(maxsize=8)
def weight_targets(unet: Path) -> dict[str, tuple[str, str, int]]:
    """module -> (initializer name, op type, ONNX element type) of the UNet's weights."""
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailable(f"LoRA needs onnx: pip install edged[quantize] ({exc})") from exc
    graph = onnx.load(str(unet), load_external_data=False).graph
    inits = {t.name: t.data_type for t in graph.initializer}
    out: dict[str, tuple[str, str, int]] = {}
    for node in graph.node:
        if node.op_type in _WEIGHT_OPS and len(node.input) > 1 and node.input[1] in inits:
            out.setdefault(
                _node_module(node.name), (node.input[1], node.op_type, inits[node.input[1]])
            )
    return out


_QUANT_OPS = ("MatMulInteger", "ConvInteger", "MatMulNBits", "DequantizeLinear", "QLinearConv")


@lru_cache(maxsize=8)
def _quantized(unet: Path) -> bool:
    import onnx

    graph = onnx.load(str(unet), load_external_data=False).graph
    return any(node.op_type in _QUANT_OPS for node in graph.node)


def _match(module: str, targets: dict[str, tuple[str, str, int]]) -> tuple[str, str, int] | None:
    if module in targets:
        return targets[module]
    hits = [v for k, v in targets.items() if k.endswith("_" + module)]
    return hits[0] if len(hits) == 1 else None


def _delta(down: F32, up: F32, alpha: float | None, shape: tuple[int, ...], op: str) -> F32:
    rank = down.shape[0]
    delta = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)  # [out, in*k*k]
    scale = (alpha / rank) if alpha is not None else 1.0
    if op == "MatMul":  # exported Linear weights are stored transposed: [in, out]
        delta = delta.T
    if int(np.prod(delta.shape)) != int(np.prod(shape)):
        raise BadRequest(f"lora shape {up.shape}x{down.shape} does not fit a weight of {shape}")
    return np.asarray(delta.reshape(shape) * scale, dtype=np.float32)


def plan_merge(unet: Path, adapter: Adapter) -> dict[str, tuple[str, LoraWeights]]:
    """initializer name -> (op type, [down, up, alpha]) for every adapter module, or a
    BadRequest naming what does not match."""
    import onnx

    targets = weight_targets(unet)
    plan: dict[str, tuple[str, LoraWeights]] = {}
    missing = []
    for module, lora in adapter.modules.items():
        hit = _match(module, targets)
        if hit is None:
            missing.append(module)
            continue
        name, op, kind = hit
        if kind not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            raise BadRequest(
                f"lora {adapter.path.name}: weight {name} of this UNet is not float "
                "(quantized); apply LoRA to an fp32/fp16 UNet"
            )
        plan[name] = (op, lora)
    if missing and _quantized(unet):
        raise BadRequest(
            f"lora {adapter.path.name}: {unet.parent.name} is a quantized UNet (its weights are "
            "not float): apply LoRA to an fp32/fp16 UNet, or merge it first and then quantize"
        )
    if missing:
        # Module names of a parsed LoRA (word characters only), never raw file bytes.
        shown = ", ".join(re.sub(r"[^\w.]", "?", m)[:80] for m in sorted(missing)[:5])
        raise BadRequest(
            f"lora {adapter.path.name}: {len(missing)} module(s) not found in {unet.parent.name}: "
            f"{shown}{' ...' if len(missing) > 5 else ''}"
        )
    return plan


def merged_model(
    model: Path, unet: Path, adapter: Adapter, scale: float, cache: SidecarCache
) -> Path:
    """``model`` (the UNet or one of its parts) with the adapter merged: a sidecar file.

    Only the targeted tensors are written (inline in the sidecar under ``cache``); every
    other tensor keeps pointing at the model's own external data, which the sidecar's
    directory links to, so the base is neither copied (where a hard link is possible) nor
    changed. (onnxruntime's ``add_initializer`` would avoid the file, but its graph optimizer
    folds some weights, e.g. a Conv's, before the override applies: measured here, the result
    silently kept the base conv weight.)
    """
    import onnx

    info = model.stat()
    tag = f"{adapter.sha256}:{scale!r}:{model.resolve()}:{info.st_size}:{info.st_mtime_ns}"
    key = hashlib.sha256(tag.encode()).hexdigest()[:24]
    found = cache.get(key)
    if found is not None:
        return found
    plan = plan_merge(unet, adapter)
    proto = onnx.load(str(model), load_external_data=False)
    for tensor in proto.graph.initializer:
        if tensor.name in plan:
            _merge_tensor(onnx, tensor, model.parent, plan[tensor.name], scale)
    locations = {
        entry.value
        for tensor in proto.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return cache.put(
        key, model.name, lambda dest: onnx.save_model(proto, str(dest)), model.parent, locations
    )


def _merge_tensor(
    onnx: Any, tensor: Any, base_dir: Path, target: tuple[str, LoraWeights], scale: float
) -> None:
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        load_external_data_for_tensor(tensor, str(base_dir))
    base = numpy_helper.to_array(tensor)
    op, (down, up, alpha) = target
    merged = base.astype(np.float32) + scale * _delta(down, up, alpha, tuple(base.shape), op)
    tensor.CopyFrom(numpy_helper.from_array(merged.astype(base.dtype), tensor.name))


def resolve(root: Path, name: str, model_dirs: Sequence[Path] = ()) -> Path:
    """``params.lora`` -> the adapter file, confined to ``root/loras`` and ``model_dirs``.

    NAME means ``<root>/loras/NAME.safetensors``; anything else must be an absolute path.
    Symlinks are resolved first, then the real path must lie inside an allowed dir, so a
    link in ``loras/`` cannot reach elsewhere. Containment is checked before existence:
    the answer never tells whether a file outside exists.
    """
    loras = root / "loras"
    if re.fullmatch(r"\w[\w.-]*", name):
        path = loras / f"{name.removesuffix('.safetensors')}.safetensors"
    elif os.path.isabs(name) and "\0" not in name:
        path = Path(name)
    else:
        raise BadRequest(f"lora {name!r}: give a NAME in {loras} or an absolute path in model_dirs")
    real = Path(os.path.realpath(path))
    allowed = [Path(os.path.realpath(d)) for d in (loras, *model_dirs)]
    if not any(real == d or d in real.parents for d in allowed):
        raise BadRequest(
            f"lora {name!r} is outside {loras} and the configured model_dirs; "
            "put the adapter there and name it"
        )
    if not real.is_file():
        raise BadRequest(f"lora {name!r}: no such file (NAME in {loras} or a path in model_dirs)")
    return real


@lru_cache(maxsize=4)
def _load_cached(path: Path, mtime_ns: int, size: int, max_bytes: int) -> Adapter:
    return Adapter.load(path, max_bytes)


@dataclass(frozen=True)
class LoraChoice:
    """What a request asked for: the adapter, its scale and where merged UNets are kept."""

    adapter: Adapter
    scale: float
    cache: SidecarCache

    def sidecar(self, model: Path, unet: Path) -> Path:
        return merged_model(model, unet, self.adapter, self.scale, self.cache)


def choose(engine: Engine, root: Path, name: str | None, scale: float) -> LoraChoice | None:
    """The validated ``params.lora`` / ``params.lora_scale`` -> a LoraChoice (None: no lora)."""
    if not name:
        return None
    settings = engine.settings
    path = resolve(root, name, settings.model_search_path)
    info = path.stat()
    limit = int(settings.generation.lora_max_bytes)
    if info.st_size > limit:  # refused before a byte is read (read_limited checks again)
        raise TooLarge(
            f"lora {path.name} is {info.st_size} bytes; generation.lora_max_bytes is {limit}"
        )
    adapter = _load_cached(path, info.st_mtime_ns, info.st_size, limit)
    cache = SidecarCache(settings.cache_dir / "lora", settings.generation.lora_cache_entries)
    return LoraChoice(adapter, scale, cache)
