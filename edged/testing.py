"""Helpers the tests (and benchmarks) share: tiny real models, fake board trees, local servers.

Nothing here is a mock of edged itself: these build real inputs (ONNX files made with
``onnx.helper``, sysfs/proc trees on disk, HTTP servers on loopback, ZeroMQ endpoints in a
temp dir) for the real code to consume. ``onnx`` comes from the ``dev`` extra.

Sections (append to your own section with small edits; keep them independent):
  - models: tiny ONNX builders
  - boards: fake sysfs/proc/dev trees
  - servers: local HTTP file server
  - zmq: temporary endpoints
  - generation: tiny SD model dirs (real IO signatures, CLIP-format BPE) without torch
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SHARED_DIR = Path(
    os.environ.get("EDGED_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")
)
"""The read-only ../shared checkout (real models and images); tests skip where it is absent."""


def shared_models_dir() -> Path:
    return SHARED_DIR / "models"


def shared_images_dir() -> Path:
    return SHARED_DIR / "images"


# ---------------------------------------------------------------- models: tiny ONNX builders


def _onnx() -> Any:
    import onnx  # dev extra: building models is a test/tool concern, never a run-time one

    return onnx


def save_model(graph: Any, path: Path, opset: int = 17) -> Path:
    """Wrap ``graph`` in a model with a fixed opset/IR that every backend here accepts."""
    onnx = _onnx()
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_scale_model(
    path: Path,
    scale: float = 2.0,
    shape: Sequence[int | str] = ("N", 3, "H", "W"),
    input_name: str = "input",
    output_name: str = "output",
) -> Path:
    """``output = input * scale`` with (possibly dynamic) shape: the smallest real model."""
    onnx = _onnx()
    h = onnx.helper
    tp = onnx.TensorProto
    graph = h.make_graph(
        [h.make_node("Mul", [input_name, "k"], [output_name])],
        "scale",
        [h.make_tensor_value_info(input_name, tp.FLOAT, list(shape))],
        [h.make_tensor_value_info(output_name, tp.FLOAT, list(shape))],
        initializer=[h.make_tensor("k", tp.FLOAT, [], [scale])],
    )
    return save_model(graph, path)


def make_matmul_model(path: Path, megabytes: float, seed: int = 0) -> Path:
    """A model whose weight initializer is ``megabytes`` MB of float32: for memory tests.

    ``y = x @ W`` with x [1, n] and W [n, n]; weights are random so nothing compresses them.
    """
    onnx = _onnx()
    h = onnx.helper
    tp = onnx.TensorProto
    n = max(1, int((megabytes * 1e6 / 4) ** 0.5))
    weights = np.random.default_rng(seed).standard_normal((n, n), dtype=np.float32)
    graph = h.make_graph(
        [h.make_node("MatMul", ["x", "W"], ["y"])],
        "matmul",
        [h.make_tensor_value_info("x", tp.FLOAT, [1, n])],
        [h.make_tensor_value_info("y", tp.FLOAT, [1, n])],
        initializer=[onnx.numpy_helper.from_array(weights, "W")],
    )
    return save_model(graph, path)


def make_conv_model(path: Path, megabytes: float, seed: int = 0) -> Path:
    """A 3x3 Conv whose weights are ``megabytes`` MB of float32 (memory tests and benches).

    x [1, c, 1, 1] padded to 3x3 -> y [1, c, 1, 1]: the weights are big, the compute tiny,
    and onnxruntime repacks Conv weights differently from MatMul ones.
    """
    onnx = _onnx()
    h = onnx.helper
    tp = onnx.TensorProto
    c = max(1, int((megabytes * 1e6 / 36) ** 0.5))
    weights = np.random.default_rng(seed).standard_normal((c, c, 3, 3), dtype=np.float32)
    graph = h.make_graph(
        [h.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [h.make_tensor_value_info("x", tp.FLOAT, [1, c, 1, 1])],
        [h.make_tensor_value_info("y", tp.FLOAT, [1, c, 1, 1])],
        initializer=[onnx.numpy_helper.from_array(weights, "W")],
    )
    return save_model(graph, path)


def make_scale_tflite(
    path: Path,
    scale: float = 2.0,
    shape: Sequence[int] = (1, -1, -1, 3),
    input_name: str = "input",
    output_name: str = "output",
) -> Path:
    """The TFLite twin of ``make_scale_model``: ``output = input * scale``, -1 dims dynamic.

    Written with the flatbuffer schema ai-edge-litert ships (no TensorFlow needed), so LiteRT
    gets a generated model with a real dynamic signature just like the ONNX backends do.
    """
    import flatbuffers  # type: ignore[import-untyped]  # ships no type information
    from ai_edge_litert import schema_py_generated as tfl

    def tensor(name: str, buffer: int, dims: Sequence[int]) -> Any:
        t = tfl.TensorT()
        t.name, t.type, t.buffer = name, tfl.TensorType.FLOAT32, buffer
        t.shape = [d if d >= 0 else 1 for d in dims]
        t.shapeSignature = list(dims)
        return t

    op = tfl.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 2], [1]
    op.builtinOptionsType, op.builtinOptions = tfl.BuiltinOptions.MulOptions, tfl.MulOptionsT()
    sub = tfl.SubGraphT()
    sub.tensors = [tensor(input_name, 0, shape), tensor(output_name, 0, shape), tensor("k", 1, [])]
    sub.inputs, sub.outputs, sub.operators, sub.name = [0], [1], [op], "main"
    code = tfl.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = tfl.BuiltinOperator.MUL
    code.version = 1
    const = tfl.BufferT()
    const.data = list(np.float32(scale).tobytes())
    model = tfl.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [sub]
    model.buffers = [tfl.BufferT(), const]  # buffer 0 is the schema's mandatory empty sentinel
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(builder.Output()))
    return path


# ---------------------------------------------------------------- boards: fake sysfs/proc/dev trees

_X86_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c lm"
_BOARDS: dict[str, dict[str, Any]] = {
    "raspberry-pi-4": {
        "cpu": ("arm", "0xd08", 4, "fp asimd evtstrm crc32 cpuid"),
        "model": "Raspberry Pi 4 Model B Rev 1.4",
        "compatible": ["raspberrypi,4-model-b", "brcm,bcm2711"],
        "video": [("video10", "bcm2835-codec-decode", "0"), ("video0", "unicam", "0")],
    },
    "raspberry-pi-5": {
        "cpu": (
            "arm",
            "0xd0b",
            4,
            "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
        ),
        "model": "Raspberry Pi 5 Model B Rev 1.0",
        "compatible": ["raspberrypi,5-model-b", "brcm,bcm2712"],
        "video": [
            ("video0", "HD USB Camera: HD USB Camera", "0"),
            ("video1", "HD USB Camera: HD USB Camera", "1"),
            ("video19", "pispbe-input", "0"),
        ],
    },
    "qualcomm-qcs": {
        "cpu": (
            "arm",
            "0xd4e",
            8,
            "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm bf16 sve sve2",
        ),
        "model": "Qualcomm Technologies, Inc. QCS6490 RB3gen2",
        "compatible": ["qcom,qcs6490-rb3gen2", "qcom,qcm6490"],
        "soc": {"machine": "QCS6490", "family": "Snapdragon", "soc_id": "497"},
        "dev": ["fastrpc-cdsp", "fastrpc-adsp", "dma_heap/system"],
    },
    "intel-igpu-npu": {
        "cpu": ("x86", "Intel(R) Core(TM) Ultra 7 155H", 4, _X86_FLAGS + " avx_vnni"),
        "dev": ["dri/renderD128", "accel/accel0"],
        "sysfs_vendor": {"class/drm/renderD128": "0x8086", "class/accel/accel0": "0x8086"},
    },
    "generic-x86": {"cpu": ("x86", "AMD Ryzen 5 5600G", 4, _X86_FLAGS)},
    "generic-arm64": {
        "cpu": ("arm", "0xd05", 4, "fp asimd evtstrm crc32 cpuid"),
        "model": "Radxa ROCK 5B",
        "compatible": ["radxa,rock-5b", "rockchip,rk3588"],
    },
    "unknown-riscv": {
        "cpu": ("riscv", "sifive,u74-mc", 4, "rv64imafdc"),
        "arch": "riscv64",
        "model": "StarFive VisionFive 2 v1.3B",
    },
}


def _cpuinfo_text(family: str, ident: str, cores: int, flags: str) -> str:
    blocks = []
    for i in range(cores):
        if family == "x86":
            blocks.append(
                f"processor\t: {i}\nvendor_id\t: x\nmodel name\t: {ident}\nflags\t\t: {flags}\n"
            )
        elif family == "arm":
            blocks.append(
                f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {flags}\n"
                f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: {ident}\n"
            )
        else:
            blocks.append(
                f"processor\t: {i}\nhart\t\t: {i}\nisa\t\t: {flags}\nuarch\t\t: {ident}\n"
            )
    return "\n".join(blocks) + "\n"


def make_board(
    root: Path, kind: str, *, cgroup_max: int | str | None = None, mem_total_kb: int = 4_000_000
) -> Path:
    """Write a fake /proc, /sys and /dev tree for a known board kind under ``root``.

    ``cgroup_max`` writes a cgroup v2 ``memory.max`` for the process's cgroup (as under
    systemd's ``MemoryMax=``). Device nodes are plain files: the probe only looks at names.
    """
    spec = _BOARDS[kind]
    family, ident, cores, flags = spec["cpu"]
    files: dict[str, str] = {
        "proc/cpuinfo": _cpuinfo_text(family, ident, cores, flags),
        "proc/meminfo": f"MemTotal:       {mem_total_kb} kB\nMemFree:        1000 kB\n",
        "proc/self/cgroup": "0::/system.slice/edged.service\n",
    }
    if "arch" in spec:
        files["proc/sys/kernel/arch"] = spec["arch"] + "\n"
    if "model" in spec:
        files["proc/device-tree/model"] = spec["model"] + "\0"
    if "compatible" in spec:
        files["proc/device-tree/compatible"] = "\0".join(spec["compatible"]) + "\0"
    for key, value in spec.get("soc", {}).items():
        files[f"sys/devices/soc0/{key}"] = value + "\n"
    for name, label, index in spec.get("video", []):
        files[f"dev/{name}"] = ""
        files[f"sys/class/video4linux/{name}/name"] = label + "\n"
        files[f"sys/class/video4linux/{name}/index"] = index + "\n"
    for node in spec.get("dev", []):
        files[f"dev/{node}"] = ""
    for sysdir, vendor in spec.get("sysfs_vendor", {}).items():
        files[f"sys/{sysdir}/device/vendor"] = vendor + "\n"
    files["sys/fs/cgroup/system.slice/edged.service/memory.max"] = (
        "max\n" if cgroup_max is None else f"{cgroup_max}\n"
    )
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


BOARD_KINDS = tuple(_BOARDS)
"""Board kinds ``make_board`` knows; each but ``unknown-riscv`` has a shipped profile of its name."""


def make_cgroup_tree(
    root: Path,
    *,
    version: int,
    cgroup: str,
    limits: dict[str, str],
    current: int | None = None,
    mount_root: str = "/",
) -> Path:
    """A fake ``proc/self/{cgroup,mountinfo}`` + cgroup fs under ``root`` for edged.memory.

    ``cgroup`` is the process's cgroup path; ``limits`` maps cgroup paths (``/`` = the
    mount itself) to the limit file's text (``"max"``, ``"1000000000"``); ``mount_root`` is
    the mountinfo root field (a cgroup namespace shows ``/`` with a deeper path hidden).
    """
    if version == 2:
        mount, fstype, opts, line = "sys/fs/cgroup", "cgroup2", "rw", f"0::{cgroup}\n"
        limit_file, current_file = "memory.max", "memory.current"
    else:
        mount, fstype, opts, line = (
            "sys/fs/cgroup/memory",
            "cgroup",
            "rw,memory",
            f"4:memory:{cgroup}\n",
        )
        limit_file, current_file = "memory.limit_in_bytes", "memory.usage_in_bytes"
    info = f"35 31 0:32 {mount_root} /{mount} rw,relatime - {fstype} {fstype} {opts}\n"
    files = {"proc/self/cgroup": line, "proc/self/mountinfo": info}
    for rel, text in limits.items():
        files[f"{mount}/{rel.strip('/')}/{limit_file}".replace("//", "/")] = text + "\n"
    if current is not None:
        files[f"{mount}/{cgroup.strip('/')}/{current_file}".replace("//", "/")] = f"{current}\n"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# ---------------------------------------------------------------- generation: tiny SD model dirs


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode table (the alphabet of CLIP's byte-level BPE)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


TINY_WORDS = ("a", "photo", "of", "the", "cat", "dog", "red", "blue", "house", "sky", "astronaut")


def write_tiny_clip_tokenizer(dest: Path, words: Sequence[str] = TINY_WORDS) -> Path:
    """A small but real CLIP-format BPE (vocab.json + merges.txt, ``</w>`` word ends)."""
    import json

    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            line = f"{merged} {piece}"
            merged += piece
            if line not in merges:
                merges.append(line)
                vocab_list.append(merged)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    dest.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (dest / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    return dest


def _named(nodes: list[Any], prefix: str) -> list[Any]:
    """Node names, as exporters write them (quantizers select and exclude nodes by name)."""
    for i, node in enumerate(nodes):
        node.name = f"{prefix}/{node.op_type}_{i}"
    return nodes


def _init(onnx: Any, rng: np.random.Generator, name: str, shape: Sequence[int], std: float) -> Any:
    array = (rng.standard_normal(tuple(shape)) * std).astype(np.float32)
    return onnx.numpy_helper.from_array(array, name)


def make_tiny_text_encoder(path: Path, vocab: int, dim: int = 32, seed: int = 1) -> Path:
    """CLIP text-encoder IO: input_ids [B,77] int32 -> last_hidden_state [B,77,D], pooler_output."""
    onnx = _onnx()
    h, tp, rng = onnx.helper, onnx.TensorProto, np.random.default_rng(seed)
    nodes = [
        h.make_node("Cast", ["input_ids"], ["ids"], to=tp.INT64),
        h.make_node("Gather", ["E", "ids"], ["emb"]),
        h.make_node("Add", ["emb", "P"], ["x"]),
        h.make_node("MatMul", ["x", "W"], ["y"]),
        h.make_node("Tanh", ["y"], ["last_hidden_state"]),
        h.make_node("ReduceMean", ["last_hidden_state"], ["pooler_output"], axes=[1], keepdims=0),
    ]
    inits = [
        _init(onnx, rng, "E", (vocab, dim), 1.0),
        _init(onnx, rng, "P", (77, dim), 0.1),
        _init(onnx, rng, "W", (dim, dim), dim**-0.5),
    ]
    graph = h.make_graph(
        _named(nodes, "text_encoder"),
        "text_encoder",
        [h.make_tensor_value_info("input_ids", tp.INT32, ["batch", 77])],
        [
            h.make_tensor_value_info("last_hidden_state", tp.FLOAT, ["batch", 77, dim]),
            h.make_tensor_value_info("pooler_output", tp.FLOAT, ["batch", dim]),
        ],
        initializer=inits,
    )
    return save_model(graph, path)


def make_tiny_unet(
    path: Path,
    *,
    ctx_dim: int = 32,
    channels: int = 64,
    seed: int = 2,
    timestep_int64: bool = False,
    ballast_mb: float = 0.0,
) -> Path:
    """UNet IO: (sample [B,4,h,w], timestep [B], encoder_hidden_states [B,77,D]) -> out_sample.

    Conv in/out plus a token-mixing MatMul so int8/int4 quantizers have real work to do.
    ``ballast_mb`` adds a text-projection weight of that size (used, so never optimised away)
    to make the UNet heavy enough for memory-budget tests.
    """
    onnx = _onnx()
    h, tp, rng, c = onnx.helper, onnx.TensorProto, np.random.default_rng(seed), channels
    nodes = [
        h.make_node("Cast", ["timestep"], ["tf"], to=tp.FLOAT),
        h.make_node("Unsqueeze", ["tf", "ax1"], ["t2"]),
        h.make_node("MatMul", ["t2", "Wt"], ["tp"]),
        h.make_node("Sin", ["tp"], ["tsin"]),
        h.make_node("ReduceMean", ["encoder_hidden_states"], ["ctx"], axes=[1], keepdims=0),
        h.make_node("MatMul", ["ctx", "Wc"], ["cproj0"]),
        h.make_node("MatMul", ["ctx", "Wb"], ["ballast"]),
        h.make_node("ReduceMean", ["ballast"], ["bmean"], axes=[1], keepdims=1),
        h.make_node("Add", ["cproj0", "bmean"], ["cproj"]),
        h.make_node("Add", ["tsin", "cproj"], ["emb"]),
        h.make_node("Unsqueeze", ["emb", "ax23"], ["emb4"]),
        h.make_node("Conv", ["sample", "Win", "bin"], ["h0"], pads=[1, 1, 1, 1]),
        h.make_node("Add", ["h0", "emb4"], ["h1"]),
        h.make_node("Shape", ["h1"], ["hshape"]),
        h.make_node("Reshape", ["h1", "flat"], ["hs"]),
        h.make_node("Transpose", ["hs"], ["ht"], perm=[0, 2, 1]),
        h.make_node("MatMul", ["ht", "Wq"], ["q"]),
        h.make_node("Tanh", ["q"], ["a"]),
        h.make_node("Transpose", ["a"], ["ab"], perm=[0, 2, 1]),
        h.make_node("Reshape", ["ab", "hshape"], ["h2"]),
        h.make_node("Add", ["h1", "h2"], ["h3"]),
        h.make_node("Conv", ["h3", "Wout"], ["out_sample"], pads=[1, 1, 1, 1]),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "ax23"),
        onnx.numpy_helper.from_array(np.array([0, c, -1], np.int64), "flat"),
        _init(onnx, rng, "Wt", (1, c), 0.01),
        _init(onnx, rng, "Wc", (ctx_dim, c), ctx_dim**-0.5),
        _init(onnx, rng, "Wb", (ctx_dim, max(1, int(ballast_mb * 1e6 / 4 / ctx_dim))), 0.01),
        _init(onnx, rng, "Win", (c, 4, 3, 3), 0.1),
        _init(onnx, rng, "bin", (c,), 0.1),
        _init(onnx, rng, "Wq", (c, c), c**-0.5),
        _init(onnx, rng, "Wout", (4, c, 3, 3), 0.05),
    ]
    t_type = tp.INT64 if timestep_int64 else tp.FLOAT
    graph = h.make_graph(
        _named(nodes, "unet"),
        "unet",
        [
            h.make_tensor_value_info("sample", tp.FLOAT, ["batch", 4, "height", "width"]),
            h.make_tensor_value_info("timestep", t_type, ["steps"]),
            h.make_tensor_value_info("encoder_hidden_states", tp.FLOAT, ["batch", 77, ctx_dim]),
        ],
        [h.make_tensor_value_info("out_sample", tp.FLOAT, ["batch", 4, "height", "width"])],
        initializer=inits,
    )
    return save_model(graph, path)


def make_tiny_vae_decoder(path: Path, channels: int = 16, seed: int = 3) -> Path:
    """VAE decoder IO: latent_sample [B,4,h,w] -> sample [B,3,8h,8w] in -1..1."""
    onnx = _onnx()
    h, tp, rng = onnx.helper, onnx.TensorProto, np.random.default_rng(seed)
    nodes = [
        h.make_node("Conv", ["latent_sample", "W1"], ["h0"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["h0"], ["h1"]),
        h.make_node("Resize", ["h1", "", "scales"], ["h2"], mode="nearest"),
        h.make_node("Conv", ["h2", "W2"], ["h3"], pads=[1, 1, 1, 1]),
        h.make_node("Tanh", ["h3"], ["sample"]),
    ]
    inits = [
        _init(onnx, rng, "W1", (channels, 4, 3, 3), 0.3),
        onnx.numpy_helper.from_array(np.array([1, 1, 8, 8], np.float32), "scales"),
        _init(onnx, rng, "W2", (3, channels, 3, 3), 0.3),
    ]
    graph = h.make_graph(
        _named(nodes, "vae_decoder"),
        "vae_decoder",
        [h.make_tensor_value_info("latent_sample", tp.FLOAT, ["batch", 4, "h", "w"])],
        [h.make_tensor_value_info("sample", tp.FLOAT, ["batch", 3, "H", "W"])],
        initializer=inits,
    )
    return save_model(graph, path)


def make_tiny_sd_dir(
    dest: Path,
    *,
    scheduler: str = "EulerDiscreteScheduler",
    timestep_int64: bool = False,
    unet_ballast_mb: float = 0.0,
) -> Path:
    """A diffusers/optimum ONNX layout with tiny real-IO graphs (SD-Turbo-like by default)."""
    import json

    tok = write_tiny_clip_tokenizer(dest / "tokenizer")
    vocab_size = len(json.loads((tok / "vocab.json").read_text("utf-8")))
    make_tiny_text_encoder(dest / "text_encoder" / "model.onnx", vocab=vocab_size)
    make_tiny_unet(
        dest / "unet" / "model.onnx", timestep_int64=timestep_int64, ballast_mb=unet_ballast_mb
    )
    make_tiny_vae_decoder(dest / "vae_decoder" / "model.onnx")
    sched: dict[str, Any] = {
        "_class_name": scheduler,
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "timestep_spacing": "trailing",
        "steps_offset": 1,
    }
    (dest / "scheduler").mkdir(parents=True, exist_ok=True)
    (dest / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched), "utf-8")
    index = {"_class_name": "ORTStableDiffusionPipeline", "scheduler": ["diffusers", scheduler]}
    (dest / "model_index.json").write_text(json.dumps(index), "utf-8")
    return dest


# ---------------------------------------------------------------- servers: local HTTP file server


class Route:
    """What the local server answers for one path.

    ``cut_after`` bytes of the body are sent and then the connection is dropped (with the
    full Content-Length promised), for the first ``cuts`` requests of the path; later
    requests are served whole. ``ranges=False`` makes the route ignore Range headers, like
    a server that cannot seek.
    """

    def __init__(
        self,
        body: bytes,
        content_type: str = "application/octet-stream",
        *,
        cut_after: int | None = None,
        cuts: int = 1,
        ranges: bool = True,
    ) -> None:
        self.body = body
        self.content_type = content_type
        self.cut_after = cut_after
        self.cuts = cuts
        self.ranges = ranges


class RequestRecord:
    """One request the server saw: path, Range header, status and body bytes sent."""

    def __init__(self, path: str, range_header: str | None, status: int, sent: int) -> None:
        self.path = path
        self.range = range_header
        self.status = status
        self.sent = sent

    def __repr__(self) -> str:
        return (
            f"RequestRecord({self.path!r}, range={self.range!r}, {self.status}, sent={self.sent})"
        )


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end); None if unsatisfiable."""
    spec = header.removeprefix("bytes=").split(",")[0].strip()
    first, _, last = spec.partition("-")
    if not first:
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    return (start, end) if start < size and start <= end else None


class FileServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 serving in-memory routes (use as a context manager).

    It honours Range requests, can cut a connection mid-body, and records every request, so
    fetch tests assert on what went over the wire (resumed from where, how many bytes).
    """

    def __init__(self) -> None:
        import threading

        self.routes: dict[str, Route] = {}
        self.log: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: Any = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, body: bytes, **options: Any) -> str:
        """Serve ``body`` at ``path``; returns its URL. Options as ``Route``."""
        self.routes[path] = Route(body, **options)
        return self.url(path)

    def add_json(self, path: str, obj: object) -> str:
        import json

        return self.add(path, json.dumps(obj).encode(), content_type="application/json")

    def requests(self, path: str) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.log if r.path == path]

    def bytes_sent(self, path: str) -> int:
        return sum(r.sent for r in self.requests(path))

    def _answer(self, handler: Any) -> None:
        path = handler.path.split("?")[0]
        route = self.routes.get(path)
        header = handler.headers.get("Range")
        if route is None:
            self._record(path, header, 404, 0)
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        body, status, extra = route.body, 200, {}
        if header and route.ranges:
            span = _parse_range(header, len(route.body))
            if span is None:
                self._record(path, header, 416, 0)
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(route.body)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            body, status = route.body[span[0] : span[1] + 1], 206
            extra["Content-Range"] = f"bytes {span[0]}-{span[1]}/{len(route.body)}"
        self._send(handler, route, body, status, extra, path=path, header=header)

    def _send(
        self,
        handler: Any,
        route: Route,
        body: bytes,
        status: int,
        extra: dict[str, str],
        *,
        path: str,
        header: str | None,
    ) -> None:
        import socket

        handler.send_response(status)
        handler.send_header("Content-Type", route.content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Accept-Ranges", "bytes" if route.ranges else "none")
        for key, value in extra.items():
            handler.send_header(key, value)
        handler.end_headers()
        cut = route.cut_after is not None and route.cuts > 0 and len(body) > route.cut_after
        if cut:
            route.cuts -= 1
            body = body[: route.cut_after]
        # Recorded before the body goes out: the client may finish (and the test look at
        # the log) before this thread runs again.
        self._record(path, header, status, len(body))
        handler.wfile.write(body)
        handler.wfile.flush()
        if cut:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)

    def _record(self, path: str, header: str | None, status: int, sent: int) -> None:
        with self._lock:
            self.log.append(RequestRecord(path, header, status, sent))

    def __enter__(self) -> FileServer:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the request log is self.log; stderr noise would hide test output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def build_wheel(
    dest_dir: Path, name: str, version: str, members: dict[str, bytes], *, padding: int = 0
) -> Path:
    """A real (minimal) ``py3-none-any`` wheel holding ``members``.

    ``padding`` bytes of incompressible data are stored before the members, so a test can
    tell a ranged read (central directory + one member) from a whole-file download.
    """
    import zipfile

    dist = f"{name.replace('-', '_')}-{version}"
    path = dest_dir / f"{dist}-py3-none-any.whl"
    dest_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as whl:
        if padding:
            noise = np.random.default_rng(0).bytes(padding)
            whl.writestr(f"{name}/padding.bin", noise, compress_type=zipfile.ZIP_STORED)
        for member, data in members.items():
            whl.writestr(member, data)
        whl.writestr(
            f"{dist}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        )
        whl.writestr(
            f"{dist}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        whl.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def build_npm_tarball(dest_dir: Path, name: str, version: str, members: dict[str, bytes]) -> Path:
    """A real npm package tarball (``package/...`` inside a .tgz) holding ``members``."""
    import io
    import json
    import tarfile

    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    files = {"package.json": json.dumps({"name": name, "version": version}).encode(), **members}
    with tarfile.open(path, "w:gz") as tgz:
        for member, data in files.items():
            info = tarfile.TarInfo(f"package/{member}")
            info.size = len(data)
            tgz.addfile(info, io.BytesIO(data))
    return path


def serve_pypi(server: FileServer, wheel: Path, name: str, version: str) -> str:
    """Publish ``wheel`` with a PyPI JSON API on ``server``; returns the index base URL.

    The file URL is relative, as some PyPI mirrors give it.
    """
    import hashlib

    data = wheel.read_bytes()
    server.add(f"/packages/{wheel.name}", data)
    entry = {
        "filename": wheel.name,
        "packagetype": "bdist_wheel",
        "size": len(data),
        "digests": {"sha256": hashlib.sha256(data).hexdigest()},
        "url": f"../../../packages/{wheel.name}",
    }
    server.add_json(f"/pypi/{name}/{version}/json", {"info": {"name": name}, "urls": [entry]})
    return server.base_url


def serve_npm(server: FileServer, tarball: Path, name: str, version: str) -> str:
    """Publish ``tarball`` with an npm registry document on ``server``; returns the registry URL."""
    import base64
    import hashlib

    data = tarball.read_bytes()
    url = server.add(f"/tarballs/{tarball.name}", data)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    meta = {"name": name, "version": version, "dist": {"tarball": url, "integrity": integrity}}
    server.add_json(f"/{name}/{version}", meta)
    return server.base_url


# ---------------------------------------------------------------- zmq: temporary endpoints


def zmq_settings(runtime_dir: Path, **zmq: Any) -> Any:
    """Settings whose default ipc endpoints live in ``runtime_dir`` (keep it short: 107 bytes)."""
    from edged.config import Settings, ZmqSettings

    return Settings(runtime_dir=runtime_dir, zmq=ZmqSettings(**zmq))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its real CRC."""
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking RGB PNG of a few hundred bytes claiming ``width`` x ``height`` pixels.

    The IDAT is a short run of zlib-compressed zero rows, as a decompression bomb would start:
    a decoder that trusts the header allocates width*height*3 bytes before noticing.
    """
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * min(width, 4096)) * 8, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


class ScaleModelHandler:
    """A real request handler: runs the tiny ONNX ``make_scale_model`` through edged.runtime.

    RGB uint8 in, ``clip(image * scale)`` out, as task results. ``gate`` (an Event) holds
    every call until set, so tests can keep requests in flight (``busy``) without sleeping.
    """

    def __init__(self, model_path: Path, *, gate: Any = None, task_name: str = "superres") -> None:
        from edged.runtime import config_for, open_session

        self.session = open_session(config_for("onnx:cpu", threads=1), model_path, warmup=False)
        self.gate = gate
        self.task_name = task_name
        self.calls = 0

    def __call__(self, request: Any) -> Any:
        from edged.errors import BadRequest
        from edged.tasks.base import TaskResult

        self.calls += 1
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise TimeoutError("test gate never opened")
        image = request.task_request.image
        if image is None:
            raise BadRequest("this handler needs an image payload")
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
        y = self.session.run({"input": x})["output"]
        out = np.clip(np.rint(y[0].transpose(1, 2, 0)), 0, 255).astype(np.uint8)
        return TaskResult(
            task=request.task,
            model="scale",
            backend=self.session.backend,
            outputs={"image": out},
            meta={"calls": self.calls},
            latency_ms={"total": 0.0},
        )


# ---------------------------------------------------------------- segmentation: generated models

SAM_GRID = 256
"""SAM's low-resolution mask grid (low_res_masks / mask_input are 256 x 256)."""


def make_sam_encoder(path: Path, seed: int = 5) -> Path:
    """A MobileSAM-shaped encoder: ``image`` [1,3,1024,1024] -> ``image_embeddings`` [1,256,64,64].

    16x16 average pooling then a 1x1 convolution with random weights and no bias, so an
    embedding cell is ``W @ mean(normalised pixels of its 16x16 patch)``: the tests can check
    normalisation and zero padding from the embedding alone.
    """
    onnx = _onnx()
    h, tp = onnx.helper, onnx.TensorProto
    weights = np.random.default_rng(seed).standard_normal((256, 3, 1, 1)).astype(np.float32)
    graph = h.make_graph(
        [
            h.make_node(
                "AveragePool", ["image"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]
            ),
            h.make_node("Conv", ["pooled", "W"], ["image_embeddings"]),
        ],
        "sam_encoder",
        [h.make_tensor_value_info("image", tp.FLOAT, [1, 3, 1024, 1024])],
        [h.make_tensor_value_info("image_embeddings", tp.FLOAT, [1, 256, 64, 64])],
        initializer=[onnx.numpy_helper.from_array(weights, "W")],
    )
    return save_model(graph, path)


def make_sam_decoder(
    path: Path,
    offsets: Sequence[float] = (0.0, 16.0, -16.0),
    ious: Sequence[float] = (0.5, 0.9, 0.7),
) -> Path:
    """A SAM ONNX decoder (the real six inputs / three outputs) whose masks are rectangles.

    Mask k's low-res logit at grid cell (i, j), whose centre is ((j+.5)*4, (i+.5)*4) in the
    1024 frame, is ``min(X - x0, x1 - X, Y - y0, y1 - Y) + offsets[k]`` with (x0, y0) / (x1, y1)
    the min / max of the first two prompt points: the rectangle they span grown by
    ``offsets[k]`` frame pixels. Piecewise linear, so bilinear upsampling reproduces its
    edges exactly and the tests can predict every mask pixel. ``iou_predictions`` = ``ious``.
    """
    onnx = _onnx()
    h, tp, nh = onnx.helper, onnx.TensorProto, onnx.numpy_helper
    m = len(offsets)
    centres = ((np.arange(SAM_GRID, dtype=np.float32) + 0.5) * 4.0).astype(np.float32)
    init = [
        nh.from_array(centres.reshape(1, 1, 1, SAM_GRID), "gx"),
        nh.from_array(centres.reshape(1, 1, SAM_GRID, 1), "gy"),
        nh.from_array(np.asarray(offsets, np.float32).reshape(1, m, 1, 1), "offsets"),
        nh.from_array(np.asarray(ious, np.float32).reshape(1, m), "ious"),
        nh.from_array(np.array([0, 0, 0], np.int64), "p0_start"),
        nh.from_array(np.array([1, 1, 2], np.int64), "p0_end"),
        nh.from_array(np.array([0, 1, 0], np.int64), "p1_start"),
        nh.from_array(np.array([1, 2, 2], np.int64), "p1_end"),
        nh.from_array(np.array([0], np.int64), "i0"),
        nh.from_array(np.array([1], np.int64), "i1"),
        nh.from_array(np.array([1, m], np.int64), "lead"),
        nh.from_array(np.array([], np.float32), "no_roi"),
        nh.from_array(np.array([], np.float32), "no_scales"),
        nh.from_array(np.array(0.0, np.float32), "zero"),
    ]
    nodes = [
        h.make_node("Slice", ["point_coords", "p0_start", "p0_end"], ["p0"]),  # [1,1,2]
        h.make_node("Slice", ["point_coords", "p1_start", "p1_end"], ["p1"]),
        h.make_node("Min", ["p0", "p1"], ["lo"]),
        h.make_node("Max", ["p0", "p1"], ["hi"]),
        h.make_node("Gather", ["lo", "i0"], ["lox"], axis=2),
        h.make_node("Gather", ["lo", "i1"], ["loy"], axis=2),
        h.make_node("Gather", ["hi", "i0"], ["hix"], axis=2),
        h.make_node("Gather", ["hi", "i1"], ["hiy"], axis=2),
        h.make_node("Sub", ["gx", "lox"], ["dx0"]),
        h.make_node("Sub", ["hix", "gx"], ["dx1"]),
        h.make_node("Sub", ["gy", "loy"], ["dy0"]),
        h.make_node("Sub", ["hiy", "gy"], ["dy1"]),
        h.make_node("Min", ["dx0", "dx1", "dy0", "dy1"], ["inside"]),  # [1,1,256,256]
        h.make_node("ReduceMean", ["image_embeddings"], ["emb_mean"], keepdims=0),
        h.make_node("Mul", ["emb_mean", "zero"], ["emb_zero"]),  # consumes the embedding
        h.make_node("Add", ["inside", "offsets"], ["grown"]),
        h.make_node("Add", ["grown", "emb_zero"], ["low_res_masks"]),
        h.make_node("Identity", ["ious"], ["iou_predictions"]),
        # Like a real SAM export this fails on a 0 x 0 orig_im_size: the loader's warm-up
        # must feed size-like vectors with ones, not zeros.
        h.make_node("Cast", ["orig_im_size"], ["hw"], to=tp.INT64),
        h.make_node("Concat", ["lead", "hw"], ["sizes"], axis=0),
        h.make_node(
            "Resize", ["low_res_masks", "no_roi", "no_scales", "sizes"], ["masks"], mode="linear"
        ),
    ]
    vi = h.make_tensor_value_info
    graph = h.make_graph(
        nodes,
        "sam_decoder",
        [
            vi("image_embeddings", tp.FLOAT, [1, 256, 64, 64]),
            vi("point_coords", tp.FLOAT, [1, "num_points", 2]),
            vi("point_labels", tp.FLOAT, [1, "num_points"]),
            vi("mask_input", tp.FLOAT, [1, 1, SAM_GRID, SAM_GRID]),
            vi("has_mask_input", tp.FLOAT, [1]),
            vi("orig_im_size", tp.FLOAT, [2]),
        ],
        [
            vi("masks", tp.FLOAT, [1, m, "H", "W"]),
            vi("iou_predictions", tp.FLOAT, [1, m]),
            vi("low_res_masks", tp.FLOAT, [1, m, SAM_GRID, SAM_GRID]),
        ],
        initializer=init,
    )
    return save_model(graph, path)


def make_yolo_seg_model(
    path: Path, output0: np.ndarray[Any, Any], output1: np.ndarray[Any, Any]
) -> Path:
    """A YOLOv8-seg export's IO (``images`` [1,3,640,640] -> ``output0`` [1,116,8400],
    ``output1`` [1,32,160,160]) that emits the planted tensors whatever the image."""
    onnx = _onnx()
    h, tp, nh = onnx.helper, onnx.TensorProto, onnx.numpy_helper
    graph = h.make_graph(
        [
            h.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
            h.make_node("Mul", ["mean", "zero"], ["nothing"]),
            h.make_node("Add", ["planted0", "nothing"], ["output0"]),
            h.make_node("Add", ["planted1", "nothing"], ["output1"]),
        ],
        "yolo_seg",
        [h.make_tensor_value_info("images", tp.FLOAT, [1, 3, 640, 640])],
        [
            h.make_tensor_value_info("output0", tp.FLOAT, list(output0.shape)),
            h.make_tensor_value_info("output1", tp.FLOAT, list(output1.shape)),
        ],
        initializer=[
            nh.from_array(np.asarray(output0, np.float32), "planted0"),
            nh.from_array(np.asarray(output1, np.float32), "planted1"),
            nh.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    return save_model(graph, path)


def write_manifest(catalog_dir: Path, entry: dict[str, Any]) -> Path:
    """Write a catalogue manifest (TOML) from a plain dict: for generated test models."""
    from edged.catalog import dump_entry
    from edged.catalog_schema import ModelEntry

    catalog_dir.mkdir(parents=True, exist_ok=True)
    path = catalog_dir / f"{entry['name']}.toml"
    path.write_text(dump_entry(ModelEntry.model_validate(entry)), encoding="utf-8")
    return path


class CountingSession:
    """Wraps a real ``Session``: counts ``run`` calls and keeps the last feeds (no mocking)."""

    def __init__(self, inner: Any) -> None:
        self.calls = 0
        self.last_feeds: dict[str, Any] = {}
        self.wrap(inner)

    def wrap(self, inner: Any) -> None:
        """Follow the real session (a new one after an eviction and reload); keep the count."""
        self.inner = inner
        self.backend: str = inner.backend
        self.inputs: tuple[Any, ...] = tuple(inner.inputs)
        self.outputs: tuple[Any, ...] = tuple(inner.outputs)

    def run(self, feeds: Any) -> Any:
        self.calls += 1
        self.last_feeds = {k: np.array(v) for k, v in feeds.items()}
        return self.inner.run(feeds)

    def close(self) -> None:
        self.inner.close()

    def resident_bytes(self) -> int | None:
        value = self.inner.resident_bytes()
        return None if value is None else int(value)


def counting_engine(settings: Any) -> Any:
    """An ``Engine`` whose sessions are wrapped in ``CountingSession`` (one per model name)."""
    import dataclasses
    from contextlib import contextmanager

    from edged.engine import Engine

    class CountingEngine(Engine):
        counters: dict[str, CountingSession]

        @contextmanager
        def acquire(self, model: str, **kwargs: Any) -> Any:
            with super().acquire(model, **kwargs) as loaded:
                counter = self.counters.setdefault(model, CountingSession(loaded.session))
                counter.wrap(loaded.session)
                yield dataclasses.replace(loaded, session=counter)

    engine = CountingEngine(settings)
    engine.counters = {}
    return engine


# ---------------------------------------------------------------- superres / inpainting: generated models


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
