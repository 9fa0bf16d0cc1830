"""Typed request parameters: one strict pydantic model per task, validated once.

``edged.tasks.registry.run_task`` (the one path of ``edged infer``, daemon requests, the inbox
and streams) turns ``TaskRequest.params`` into the task's model before the task runs, so a
task reads checked, typed, bounded values and never parses numbers itself. Every validation
error becomes one ``BadRequest`` line naming the parameter and what it accepts.

Numbers: JSON numbers, or decimal text (``edged infer --param opacity=.5`` keeps working);
NaN, infinities, booleans and anything else are refused. Every numeric field has bounds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from edged.errors import BadRequest

if TYPE_CHECKING:
    from edged.tasks.base import TaskRequest

__all__ = [
    "MAX_HALO",
    "MAX_TILE",
    "MIN_TILE",
    "GenerationParams",
    "InpaintingParams",
    "SegmentationParams",
    "SuperresParams",
    "TaskParams",
    "TextEncodeParams",
    "params_of",
    "validate_params",
]

_INT_TEXT = re.compile(r"[+-]?\d{1,30}")
_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?")
MIN_TILE = 32
"""Smallest superres window: below it the halo dominates and model runs explode."""
MAX_TILE = 4096
MAX_HALO = 64
MAX_TEXT = 4096


def _from_text(value: Any) -> Any:
    """Decimal text -> int/float (what ``--param k=v`` sends when v is not JSON); else as is."""
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.fullmatch(text):
            return int(text)
        if _FLOAT_TEXT.fullmatch(text):
            return float(text)  # 1e999 -> inf, refused by allow_inf_nan=False
    return value


Int = Annotated[int, BeforeValidator(_from_text)]
Float = Annotated[float, BeforeValidator(_from_text)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]


def _colour(value: Any) -> Any:
    from edged import imaging

    if value is None:
        return None
    try:
        return imaging.parse_color(value)
    except BadRequest:
        raise PydanticCustomError(
            "colour", "a colour: '#rrggbb', 'r,g,b' or [r, g, b] 0..255"
        ) from None


Colour = Annotated[tuple[int, int, int] | None, BeforeValidator(_colour)]
ClassIndex = Annotated[int, Field(ge=0, le=10_000)]
ClassName = Annotated[str, Field(max_length=256)]
ClassList = Annotated[list[ClassName | ClassIndex], Field(max_length=1000)]


class TaskParams(BaseModel):
    """Strict, closed (unknown keys refused), finite, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class SegmentationParams(TaskParams):
    output: Literal["mask", "cutout", "overlay", "blur", "replace"] = "mask"
    color: Colour = None
    """overlay tint (default green)."""
    opacity: Float = Field(default=0.5, ge=0.0, le=1.0)
    radius: Float | None = Field(default=None, ge=3, le=201)
    """blur radius in pixels; None = a fortieth of the long side (clamped to 3..201)."""
    background: Colour = None
    """replace colour (default green)."""
    classes: ClassName | ClassIndex | ClassList | None = None
    """deeplab: names or indices (or 'all'); yolo: class indices."""
    conf: Float = Field(default=0.25, ge=0.0, le=1.0)
    iou: Float = Field(default=0.7, ge=0.0, le=1.0)
    max_det: Int = Field(default=100, ge=1, le=1000)


class SuperresParams(TaskParams):
    """What a client may ask of superres: only ways to use LESS memory or the same.

    ``tile`` is an upper bound on the window side (the budget may choose smaller); untiled
    runs (``tile=0``) and the model's per-pixel activation cost are not client settings.
    """

    tile: Int | None = Field(default=None, ge=MIN_TILE, le=MAX_TILE)
    halo: Int | None = Field(default=None, ge=0, le=MAX_HALO)
    overlap: Int | None = Field(default=None, ge=0, le=MAX_HALO)
    """Alias of ``halo`` (read ``effective_halo``)."""

    @property
    def effective_halo(self) -> int | None:
        return self.halo if self.halo is not None else self.overlap


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


class InpaintingParams(TaskParams):
    method: Annotated[Literal["telea", "ns"] | None, BeforeValidator(_lower)] = None
    """opencv family; None = the entry's (telea)."""
    radius: Float | None = Field(default=None, gt=0, le=64)
    context: Float | None = Field(default=None, ge=0, le=4)
    min_window: Int | None = Field(default=None, ge=1, le=MAX_TILE)


class GenerationParams(TaskParams):
    prompt: Text | None = None
    negative_prompt: Text = ""
    steps: Int | None = Field(default=None, ge=1, le=1000)
    guidance_scale: Float | None = Field(default=None, ge=0, le=50)
    seed: Int = Field(default=0, ge=0, le=2**32 - 1)
    width: Int = Field(default=512, ge=64, le=2048)
    height: Int = Field(default=512, ge=64, le=2048)
    decoder: Text = "auto"
    decoder_tile: Int | None = Field(default=None, ge=0, le=1024)
    scheduler: Literal["auto", "euler", "lcm"] = "auto"
    residency: Literal["auto", "resident", "staged"] | None = None
    model_dir: Text | None = None
    lora: Text | None = None
    lora_scale: Float = Field(default=1.0, ge=-8, le=8)


class TextEncodeParams(TaskParams):
    model_dir: Text | None = None


MODELS: dict[str, type[TaskParams]] = {
    "segmentation": SegmentationParams,
    "superres": SuperresParams,
    "inpainting": InpaintingParams,
    "generation": GenerationParams,
    "text_encode": TextEncodeParams,
}
REFUSED = {
    "activation_bytes_per_px": "is the model's measured cost (catalogue entry), not a request "
    "parameter; the tile size comes from the memory budget",
}
"""Keys a client might try that are deliberately not parameters, with the reason."""

P = TypeVar("P", bound=TaskParams)


def validate_params(task: str, raw: object) -> TaskParams | None:
    """``raw`` as the task's typed model (None for a task without one); BadRequest if invalid."""
    cls = MODELS.get(task)
    if cls is None:
        return None
    return _parse(cls, task, raw)


def params_of(request: TaskRequest, cls: type[P]) -> P:
    """The request's validated params (validated now when the request bypassed run_task)."""
    typed = request.typed_params
    if isinstance(typed, cls):
        return typed
    return _parse(cls, request.task, request.params)


def _parse(cls: type[P], task: str, raw: object) -> P:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise BadRequest(f"params must be an object of {task} parameters")
    for key in raw:
        if key in REFUSED:
            raise BadRequest(f"params.{key} {REFUSED[key]}")
    try:
        return cls.model_validate(dict(raw))
    except ValidationError as exc:
        raise BadRequest(_message(cls, task, exc)) from None


def _message(cls: type[TaskParams], task: str, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    err = errors[0]
    name = str(err["loc"][0]) if err["loc"] else "(params)"
    fields = {e["loc"][0] for e in errors if e["loc"]}  # a union fails once per member
    more = f" (+{len(fields) - 1} more)" if len(fields) > 1 else ""
    if err["type"] == "extra_forbidden":
        known = ", ".join(cls.model_fields)
        return f"params.{name}: {task} has no such parameter; it takes {known}{more}"
    shown = repr(err.get("input"))
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"params.{name} {shown}: expected {_expected(cls, name, err)}{more}"


def _expected(cls: type[TaskParams], name: str, err: Any) -> str:
    if err["type"] == "colour":
        return str(err["msg"])
    schema = _schema(cls)["properties"].get(name, {})
    options = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    words = [_describe(s) for s in options]
    return " or ".join(w for w in words if w) or str(err["msg"])


def _describe(schema: dict[str, Any]) -> str:
    if "enum" in schema or "const" in schema:
        return "one of " + ", ".join(str(v) for v in schema.get("enum", [schema.get("const")]))
    kind = schema.get("type")
    if kind in ("integer", "number"):
        # Constraints on an optional field land as ge/le/gt in the schema, else minimum/...
        lo = _first(schema, "minimum", "ge", "exclusiveMinimum", "gt")
        hi = _first(schema, "maximum", "le")
        what = "an integer" if kind == "integer" else "a finite number"
        if "exclusiveMinimum" in schema or "gt" in schema:
            return f"{what} > {_num(lo)} and <= {_num(hi)}"
        return f"{what} in {_num(lo)}..{_num(hi)}"
    if kind == "string":
        return f"text of at most {schema.get('maxLength', MAX_TEXT)} characters"
    if kind == "array":
        return "a list of those"
    return str(kind or "")


def _first(schema: dict[str, Any], *keys: str) -> Any:
    return next((schema[k] for k in keys if k in schema), None)


def _num(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


@cache
def _schema(cls: type[TaskParams]) -> dict[str, Any]:
    return cls.model_json_schema()
