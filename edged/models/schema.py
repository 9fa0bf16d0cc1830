"""The catalogue manifest schema (``models/*.toml``): one ``ModelEntry`` per model.

Example (``models/espcn_x2.toml``)::

    name = "espcn_x2"
    task = "superres"
    family = "sr-y"
    licence = "Apache-2.0"
    description = "ESPCN x2 (OpenCV dnn_superres), Y channel"
    [params]
    scale = 2
    [input]
    layout = "NHWC"
    color = "Y"
    range = [0.0, 1.0]
    size = "dynamic"
    [output]
    layout = "NCHW"
    [[files]]
    format = "onnx"
    precision = "fp32"
    path = "espcn_x2.onnx"
    sha256 = "dfd9..."
    size = 86463
    sources = []
    [recipe]
    command = "python -m tf2onnx.convert --graphdef ESPCN_x2.pb ... --output espcn_x2.onnx"
    upstream = ["https://github.com/fannymonori/TF-ESPCN (export/ESPCN_x2.pb)"]

A Hub file is pinned to a commit: ``sources = ["hf://OWNER/REPO@<40-hex commit>/PATH"]``; every
file lists a source or the entry a ``[recipe]`` (what a user runs to make the file).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edged.schema import StrictModel

Task = Literal["segmentation", "superres", "inpainting", "generation"]
Format = Literal["onnx", "tflite", "openvino", "dir"]
Precision = Literal["fp32", "fp16", "int8", "int4"]
SOURCE_SCHEMES = ("https://", "http://", "file://", "pypi:", "npm:", "hf://")
HF_SOURCE = re.compile(
    r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)@(?P<revision>[0-9a-f]{40})/(?P<path>[^?#]+)$"
)
"""``hf://OWNER/REPO@REVISION/PATH``: REVISION is a full commit, so the bytes cannot move."""


class ModelFile(StrictModel):
    """One file (or ONNX directory for generation) of a model in one format and precision."""

    format: Format = Field(description="Which runtime family reads it.")
    precision: Precision = Field(default="fp32", description="Weight precision.")
    path: str = Field(description="File name relative to a model dir.")
    sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="Hex sha256; None only for user files."
    )
    size: int | None = Field(default=None, ge=0, description="Bytes.")
    sources: list[str] = Field(
        default_factory=list,
        description=(
            "https://, file://, hf://OWNER/REPO@COMMIT/PATH, pypi:PKG==VER#member "
            "or npm:PKG@VER#member."
        ),
    )
    provenance: str | None = Field(
        default=None, description="Where the sha256, size and sources were read (for audits)."
    )
    scheme: str | None = Field(default=None, description="Quantization scheme, if quantized.")
    gate: dict[str, Any] | None = Field(
        default=None, description="Accuracy-gate result of a quantized variant."
    )

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        # Fetch writes to model_dir / path: an absolute path or `..` would escape the model dir.
        parts = value.replace("\\", "/").split("/")
        if not value or value.startswith("/") or ".." in parts:
            raise ValueError("must be a relative path inside a model dir (no leading / or ..)")
        return value

    @field_validator("sources")
    @classmethod
    def _known_schemes(cls, value: list[str]) -> list[str]:
        for source in value:
            if not source.startswith(SOURCE_SCHEMES):
                raise ValueError(
                    f"{source!r}: a source starts with one of {', '.join(SOURCE_SCHEMES)}"
                )
            if source.startswith(("pypi:", "npm:")) and "#" not in source:
                raise ValueError(f"{source!r}: name the member after '#', e.g. pypi:PKG==VER#dir/f")
            if source.startswith("hf://") and not HF_SOURCE.match(source):
                raise ValueError(
                    f"{source!r}: expected hf://OWNER/REPO@REVISION/PATH with REVISION a "
                    "40-hex commit (a branch name could change the bytes)"
                )
        return value

    @property
    def fetchable(self) -> bool:
        """`edged models fetch` can download it (model directories are converted, not fetched)."""
        return bool(self.sources) and self.format != "dir"


class Recipe(StrictModel):
    """How a user makes a model's files when no download has the catalogue's bytes."""

    command: str | None = Field(
        default=None, description="The one command to run (on a workstation), if there is one."
    )
    steps: str = Field(default="", description="What to do when no single command does it.")
    upstream: list[str] = Field(
        default_factory=list, description="The upstream files or repos (pinned) it reads."
    )
    note: str = Field(default="", description="Caveats; where the pins came from.")

    @model_validator(mode="after")
    def _says_something(self) -> Recipe:
        if not (self.command or self.steps):
            raise ValueError("a recipe needs a command or steps")
        return self


class InputSpec(StrictModel):
    """How an image becomes the model's input tensor."""

    name: str | None = Field(default=None, description="Input tensor name; default the first.")
    layout: Literal["NHWC", "NCHW"] = Field(default="NHWC", description="Tensor layout.")
    color: Literal["RGB", "BGR", "Y", "GRAY"] = Field(default="RGB", description="Channels.")
    range: tuple[float, float] = Field(
        default=(0.0, 1.0), description="Value range the model expects for pixel 0..255."
    )
    size: tuple[int, int] | Literal["dynamic"] = Field(
        default="dynamic", description="(height, width) for fixed-size models."
    )
    dtype: str = Field(default="float32", description="Input dtype.")


class OutputSpec(StrictModel):
    """How to read the model's output."""

    name: str | None = Field(default=None, description="Output tensor name; default the first.")
    layout: Literal["NHWC", "NCHW"] = Field(default="NHWC", description="Tensor layout.")
    range: tuple[float, float] = Field(default=(0.0, 1.0), description="Output value range.")


class ModelEntry(StrictModel):
    """A catalogue entry: what a model is, where its files are and how to feed it."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,80}$", description="Unique model name.")
    task: Task = Field(description="Task it serves.")
    family: str = Field(description="Selects pre/post-processing, e.g. mediapipe-selfie, sr-y.")
    licence: str = Field(description="SPDX id, or LicenseRef-* for non-SPDX terms.")
    description: str = Field(default="", description="One line for `edged models list`.")
    files: list[ModelFile] = Field(default_factory=list, description="Variants of the model.")
    input: InputSpec = Field(default_factory=InputSpec, description="Input spec.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Output spec.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Family-specific constants (scale, labels, ...)."
    )
    components: dict[str, str] = Field(
        default_factory=dict,
        description="Multi-model families: role -> model name (e.g. encoder/decoder for SAM).",
    )
    homepage: str | None = Field(
        default=None, description="Where a user obtains the model when edged cannot fetch it."
    )
    recipe: Recipe | None = Field(
        default=None, description="How to make the files when they cannot all be fetched."
    )

    @model_validator(mode="after")
    def _unique_files(self) -> ModelEntry:
        paths = [f.path for f in self.files]
        dupes = sorted({p for p in paths if paths.count(p) > 1})
        if dupes:
            raise ValueError(f"file paths must be unique, repeated: {', '.join(dupes)}")
        return self

    @property
    def fetchable(self) -> bool:
        """`edged models fetch NAME` installs at least one loadable file."""
        return any(f.fetchable for f in self.files)

    def obtain_hint(self) -> str:
        """The command that gets this model's files, for "not installed" errors."""
        if self.fetchable:
            return f"run `edged models fetch {self.name}`"
        first = self.files[0].path if self.files else self.name
        add = f"`edged models add {first} --task {self.task} --family {self.family}`"
        if self.recipe is not None:
            needs = f" (needs {', '.join(self.recipe.upstream)})" if self.recipe.upstream else ""
            how = (
                f"make it with `{self.recipe.command}`"
                if self.recipe.command
                else f"convert it yourself: {self.recipe.steps}"
            )
            return f"{how}{needs}, then {add}"
        where = f" from {self.homepage}" if self.homepage else ""
        return f"obtain {first}{where}, then {add}"

    def total_size(self) -> int:
        """Bytes of all listed files (the ones whose size is known)."""
        return sum(f.size or 0 for f in self.files)
