"""Cut an ONNX graph into consecutive parts that can be loaded, run and evicted one at a time.

Why: in staged generation the UNet is the largest stage. All of its weights (0.87 GB int8 for
SD-Turbo) are touched during one step, so loading it whole puts every weight plus the step's
activations in memory at once. Cut into N parts of about equal weight bytes, each part is
loaded, run on the tensors the previous parts produced, and evicted; the peak becomes the
largest part plus the tensors crossing the cuts (skip connections: a few MB at 512x512).

How: ONNX requires nodes in topological order, so any cut of the node list is a valid split.
Near each equal-weight target the cut is moved to where the fewest activations cross it.
Constants (and nodes computed from initializers only) are copied into every part that uses
them. Each part is saved with untyped outputs and loaded once by onnxruntime, which infers
their types and shapes (it knows its contrib ops: quantized MatMul/Conv, MultiHeadAttention;
ONNX's own inference does not); those typed ValueInfos become the next parts' inputs.
``parts.json`` lists the parts in run order.

Needs ``onnx``: ``pip install edged[quantize]``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edged.errors import BackendUnavailable, BadRequest, ModelLoadError

MANIFEST = "parts.json"
_WINDOW = 0.25
"""A cut may move this fraction of one part's weight share away from its target."""
_NODE_SHARE = 0.5
"""Per-node cost as a fraction of the mean weight bytes per node (see ``node_costs``)."""
_GATHERED_ROWS = 2 * 77
"""Rows of an embedding table one run reads at most (CLIP: 77 tokens, two prompts)."""


@dataclass(frozen=True)
class PartInfo:
    """One part as ``parts.json`` records it."""

    path: str
    inputs: list[str]
    outputs: list[str]
    weight_bytes: int
    nodes: int


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailable(
            f"splitting a model needs onnx: pip install edged[quantize] ({exc})"
        ) from exc
    return onnx


def tensor_bytes(onnx: Any, tensor: Any) -> int:
    """Size of an initializer from its dims and type (no data needed)."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return int(math.prod(tensor.dims)) * int(dtype.itemsize)


# ---------------------------------------------------------------- where to cut


def _lifetimes(graph: Any, compute: Sequence[Any], local: set[str]) -> dict[str, tuple[int, int]]:
    """tensor -> (index of its producer or -1, index of its last consumer) over ``compute``."""
    span: dict[str, list[int]] = {i.name: [-1, -1] for i in graph.input}
    for index, node in enumerate(compute):
        for name in node.input:
            if name and name not in local and name in span:
                span[name][1] = index
        for name in node.output:
            if name:
                span[name] = [index, -1]
    for out in graph.output:
        if out.name in span:
            span[out.name][1] = len(compute)
    return {k: (v[0], v[1]) for k, v in span.items()}


def choose_cuts(weights: Sequence[int], crossing: Sequence[int], parts: int) -> list[int]:
    """Cut positions (a cut at p separates nodes < p from nodes >= p).

    ``weights[i]`` is the weight bytes node i brings; ``crossing[p]`` how many activations a
    cut at p carries. Each cut lands within ``_WINDOW`` of its equal-weight target, at the
    fewest crossings (then the closest to the target).
    """
    total = sum(weights)
    share = total / parts
    cumulative = [0]
    for w in weights:
        cumulative.append(cumulative[-1] + w)
    cuts: list[int] = []
    for k in range(1, parts):
        target = share * k
        lo, hi = target - _WINDOW * share, target + _WINDOW * share
        start = cuts[-1] + 1 if cuts else 1
        window = [p for p in range(start, len(weights)) if lo <= cumulative[p] <= hi]
        if not window:
            window = [min(range(start, len(weights)), key=lambda p: abs(cumulative[p] - target))]
        best = min(window, key=lambda p: (crossing[p], abs(cumulative[p] - target)))
        cuts.append(best)
    return cuts


def _crossings(spans: dict[str, tuple[int, int]], count: int) -> list[int]:
    diff = [0] * (count + 2)
    for born, last in spans.values():
        if last > born:  # live after node `born` up to node `last`: cuts born+1 .. last
            diff[born + 1] += 1
            diff[last + 1] -= 1
    out, running = [], 0
    for p in range(count + 1):
        running += diff[p]
        out.append(running)
    return out


# ---------------------------------------------------------------- building the parts


def _constant_nodes(nodes: Sequence[Any], inits: set[str]) -> dict[str, Any]:
    """output -> node for nodes computed from initializers and constants only (Constant,
    Unsqueeze of a norm's gamma, ...): copied into each part that needs them, never cut."""
    known = set(inits)
    out: dict[str, Any] = {}
    for node in nodes:
        if all(not i or i in known for i in node.input):
            for name in node.output:
                if name:
                    out[name] = node
                    known.add(name)
    return out


def _probe(onnx: Any, path: Path) -> dict[str, Any]:
    """Typed ValueInfos of a saved part's outputs, as onnxruntime infers them on load.

    onnxruntime knows its contrib ops (quantized MatMul/Conv, MultiHeadAttention, ...), which
    ONNX's own shape inference does not; loading is cheap (no optimisation, weights mapped).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.add_session_config_entry("session.disable_prepacking", "1")
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"split part {path.name} does not load: {exc}") from exc
    infos = {}
    for arg in session.get_outputs():
        kind = arg.type.removeprefix("tensor(").removesuffix(")").upper()
        dims = [d if isinstance(d, int | str) else None for d in arg.shape]
        infos[arg.name] = onnx.helper.make_tensor_value_info(
            arg.name, getattr(onnx.TensorProto, kind), dims
        )
    return infos


@dataclass
class _Graph:
    """The parsed source graph and what every part needs from it."""

    onnx: Any
    model: Any
    compute: list[Any]
    constants: dict[str, Any]
    inits: dict[str, Any]
    known: dict[str, Any]
    """name -> typed ValueInfo: the graph's inputs/outputs, then each saved part's outputs."""

    @classmethod
    def load(cls, onnx: Any, src: Path) -> _Graph:
        model = onnx.load(str(src), load_external_data=False)
        graph = model.graph
        for node in graph.node:
            if any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                for a in node.attribute
            ):
                raise BadRequest(
                    f"{src}: {node.op_type} has subgraphs; control flow cannot be split"
                )
        inits = {t.name: t for t in graph.initializer}
        constants = _constant_nodes(graph.node, set(inits))
        compute = [n for n in graph.node if n.output[0] not in constants]
        known = {i.name: i for i in (*graph.input, *graph.output)}
        return cls(onnx, model, compute, constants, inits, known)

    def closure(self, names: Sequence[str]) -> list[Any]:
        """The constant nodes ``names`` depend on, in graph order."""
        need: dict[int, Any] = {}
        stack = [n for n in names if n in self.constants]
        while stack:
            node = self.constants[stack.pop()]
            if id(node) not in need:
                need[id(node)] = node
                stack.extend(i for i in node.input if i in self.constants)
        order = {id(n): k for k, n in enumerate(self.model.graph.node)}
        return sorted(need.values(), key=lambda n: order[id(n)])

    def uses(self, node: Any) -> list[str]:
        """Every input name of ``node`` and of the constant nodes it depends on."""
        deps = self.closure(list(node.input))
        return [i for n in (*deps, node) for i in n.input if i]

    def node_weights(self) -> list[int]:
        """Weight bytes each node brings in a run: a table only gathered from (a token
        embedding, 202 MB in OpenCLIP ViT-H) counts the rows a prompt reads, since mapped
        weights cost the pages touched; cuts by file bytes would give it a part alone."""
        tables = self._gathered_tables()
        seen: set[str] = set()
        out = []
        for node in self.compute:
            fresh = [i for i in self.uses(node) if i in self.inits and i not in seen]
            seen.update(fresh)
            out.append(sum(self._read_bytes(i, i in tables) for i in fresh))
        return out

    def _gathered_tables(self) -> set[str]:
        uses: dict[str, set[tuple[str, int]]] = {}
        for node in self.model.graph.node:
            for slot, name in enumerate(node.input):
                uses.setdefault(name, set()).add((node.op_type, slot))
        return {name for name in self.inits if uses.get(name) == {("Gather", 0)}}

    def _read_bytes(self, name: str, table: bool) -> int:
        tensor = self.inits[name]
        nbytes = tensor_bytes(self.onnx, tensor)
        dims = list(tensor.dims)
        if not table or len(dims) != 2 or dims[0] <= _GATHERED_ROWS:
            return nbytes
        return int(_GATHERED_ROWS * (nbytes // dims[0]))

    def cuts(self, parts: int) -> list[int]:
        local = set(self.inits) | set(self.constants)
        spans = _lifetimes(self.model.graph, self.compute, local)
        return choose_cuts(self.node_costs(), _crossings(spans, len(self.compute)), parts)

    def node_costs(self) -> list[int]:
        """What a cut balances: weight bytes read plus a fixed share per node. Weights alone
        leave the 64x64 levels of an SD UNet (few weights, most of the activations: 5-10 MB
        per tensor, 42 MB per feed-forward projection at 512x512) in one or two parts that
        then set the peak; counting nodes cuts those levels more often."""
        weights = self.node_weights()
        share = int(_NODE_SHARE * sum(weights) / max(1, len(weights)))
        return [w + share for w in weights]


def _part_model(
    g: _Graph, nodes: list[Any], later: set[str], src_dir: Path
) -> tuple[Any, list[str], list[str], int]:
    """One part's ModelProto (initializer data loaded), its inputs, outputs and weight bytes."""
    onnx = g.onnx
    from onnx.external_data_helper import load_external_data_for_tensor

    produced = {o for n in nodes for o in n.output if o}
    consts = g.closure([i for n in nodes for i in n.input if i])
    used = [i for n in (*consts, *nodes) for i in n.input if i]
    inputs = [
        i
        for i in dict.fromkeys(used)
        if i not in produced and i not in g.inits and i not in g.constants
    ]
    graph_outputs = {o.name for o in g.model.graph.output}
    outputs = [o for n in nodes for o in n.output if o and (o in later or o in graph_outputs)]
    inits = []
    for name in dict.fromkeys(i for i in used if i in g.inits):
        tensor = onnx.TensorProto()
        tensor.CopyFrom(g.inits[name])
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            load_external_data_for_tensor(tensor, str(src_dir))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
        inits.append(tensor)
    graph = onnx.helper.make_graph(
        [*consts, *nodes],
        g.model.graph.name or "part",
        [g.known[i] for i in inputs],
        # Untyped: onnxruntime infers them on load and _probe reads them back.
        [g.known.get(o) or onnx.ValueInfoProto(name=o) for o in outputs],
        initializer=inits,
    )
    model = onnx.helper.make_model(graph, opset_imports=list(g.model.opset_import))
    model.ir_version = g.model.ir_version
    model.functions.extend(g.model.functions)
    return model, inputs, outputs, sum(tensor_bytes(onnx, t) for t in inits)


def _type_outputs(g: _Graph, path: Path) -> None:
    """Learn the part's output types/shapes and write them into its graph (no weights touched)."""
    probed = _probe(g.onnx, path)
    g.known.update(probed)
    model = g.onnx.load(str(path), load_external_data=False)
    typed = [probed[o.name] for o in model.graph.output]
    del model.graph.output[:]
    model.graph.output.extend(typed)
    g.onnx.save_model(model, str(path))


def split_model(src: Path, dest: Path, parts: int) -> list[PartInfo]:
    """Write ``dest/part{i}.onnx`` (+ ``.data``) and ``dest/parts.json``; see the module doc."""
    if parts < 2:
        raise BadRequest(f"--parts {parts}: at least 2")
    onnx = _onnx()
    if not src.is_file():
        raise BadRequest(f"{src}: no such model file")
    g = _Graph.load(onnx, src)
    if parts > len(g.compute):
        raise BadRequest(f"--parts {parts}: the graph has only {len(g.compute)} nodes")
    bounds = [0, *g.cuts(parts), len(g.compute)]
    dest.mkdir(parents=True, exist_ok=True)
    infos: list[PartInfo] = []
    for k in range(parts):
        nodes = g.compute[bounds[k] : bounds[k + 1]]
        later = {i for n in g.compute[bounds[k + 1] :] for i in n.input if i}
        model, inputs, outputs, weight = _part_model(g, nodes, later, src.parent)
        name = f"part{k}.onnx"
        for stale in (dest / name, dest / f"{name}.data"):
            stale.unlink(missing_ok=True)
        onnx.save_model(
            model,
            str(dest / name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{name}.data",
            size_threshold=1024,
        )
        _type_outputs(g, dest / name)
        infos.append(PartInfo(name, inputs, outputs, weight, len(nodes)))
        del model  # one part's weights in memory at a time
    manifest = {
        "source": src.name,
        "inputs": [_spec(onnx, i) for i in g.model.graph.input],
        "outputs": [_spec(onnx, o) for o in g.model.graph.output],
        "parts": [asdict(i) for i in infos],
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")
    return infos


def _spec(onnx: Any, info: Any) -> dict[str, Any]:
    """A graph input/output as ``{"name", "shape", "dtype"}`` (numpy dtype name)."""
    kind = info.type.tensor_type
    dims = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in kind.shape.dim
    ]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).name
    return {"name": info.name, "shape": dims, "dtype": dtype}


@dataclass(frozen=True)
class Manifest:
    """``parts.json``: the whole graph's inputs/outputs and its parts in run order."""

    directory: Path
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    parts: list[PartInfo]


def read_parts(directory: Path) -> Manifest | None:
    """The parts ``split_model`` wrote; None when ``directory`` has none."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
        infos = [PartInfo(**p) for p in data["parts"]]
        manifest = Manifest(directory, list(data["inputs"]), list(data["outputs"]), infos)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{path}: not a parts manifest ({exc}); re-run `edged models split`"
        ) from exc
    for info in infos:
        if not (directory / info.path).is_file():
            raise ModelLoadError(f"{path}: {info.path} is missing; re-run `edged models split`")
    return manifest
