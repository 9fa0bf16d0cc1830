"""Backend profiles: which runtimes, precision and models suit a board.

Profiles are TOML files (``profiles/*.toml`` shipped, ``profile_dirs`` from settings override
by name). Each has match rules against ``Hardware``; every rule a profile states must hold, and
of the matching profiles the one stating the most rules wins (``generic`` states none). Two
winners with the same number of rules is a configuration error, never a coin toss.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from edged.config import Settings
from edged.errors import BackendUnavailable, ConfigError
from edged.hardware import Hardware, RuntimeDevices, probe, probe_runtimes
from edged.runtime import backend_spec, split_backend
from edged.schema import ByteSize, StrictModel, validation_problems

DEFAULT_BUDGET = 1_500_000_000
TASKS = ("segmentation", "superres", "inpainting", "generation")


class MatchRules(StrictModel):
    """Conditions on the probed hardware; all stated ones must hold."""

    arch: list[str] = Field(default_factory=list, description="Any of these architectures.")
    vendor: list[str] = Field(default_factory=list, description="Any of these vendors.")
    board: list[str] = Field(
        default_factory=list, description="Substring of the device-tree model."
    )
    compatible: list[str] = Field(default_factory=list, description="Any device-tree compatible.")
    soc: list[str] = Field(default_factory=list, description="Substring of soc0 machine/family/id.")
    cpu_model: list[str] = Field(default_factory=list, description="Substring of the CPU model.")
    accelerators: list[str] = Field(
        default_factory=list, description="Any of these accelerator kinds."
    )
    isa: list[str] = Field(default_factory=list, description="All of these ISA flags.")

    def specificity(self) -> int:
        return sum(1 for value in self.model_dump().values() if value)

    def failures(self, hw: Hardware) -> list[str]:
        """Human-readable reasons this profile does not match (empty = it matches)."""
        fails: list[str] = []
        low = str.lower
        checks: list[tuple[str, list[str], bool]] = [
            ("arch", self.arch, hw.arch in self.arch),
            ("vendor", self.vendor, (hw.vendor or "") in self.vendor),
            ("board", self.board, any(low(b) in low(hw.board or "") for b in self.board)),
            ("compatible", self.compatible, bool(set(self.compatible) & set(hw.compatible))),
            ("soc", self.soc, any(low(s) in low(" ".join(hw.soc.values())) for s in self.soc)),
            ("cpu_model", self.cpu_model, any(low(c) in low(hw.cpu_model) for c in self.cpu_model)),
            (
                "accelerators",
                self.accelerators,
                bool({a.kind for a in hw.accelerators} & set(self.accelerators)),
            ),
            ("isa", self.isa, set(self.isa) <= set(hw.isa)),
        ]
        for name, wanted, ok in checks:
            if wanted and not ok:
                fails.append(f"{name} not {wanted}")
        return fails


class Profile(StrictModel):
    """A board profile (one TOML file)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$", description="Unique name.")
    description: str = Field(default="", description="One line shown by `edged profile`.")
    match: MatchRules = Field(default_factory=MatchRules, description="When it applies.")
    threads: int | None = Field(
        default=None, ge=1, description="Runtime threads; None = all cores."
    )
    precision: Literal["int8", "fp16", "fp32"] = Field(
        default="fp32", description="Preferred weights."
    )
    memory_budget: ByteSize = Field(
        default=DEFAULT_BUDGET, gt=0, description="Pool budget default."
    )
    backends: dict[str, list[str]] = Field(
        description="Ordered backend chain per task; key `default` for tasks not listed."
    )
    models: dict[str, str] = Field(default_factory=dict, description="Preferred model per task.")
    pinned_models: list[str] = Field(default_factory=list, description="Always resident.")
    runtime_options: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description=(
            "Per-backend options passed to the runtime as they are: onnx:* execution-provider "
            "options (onnx:qnn htp_performance_mode), openvino:* compile properties."
        ),
    )

    @field_validator("runtime_options")
    @classmethod
    def _options_reach_a_backend(
        cls, value: dict[str, dict[str, str]]
    ) -> dict[str, dict[str, str]]:
        # Checked here so a typo'd backend or a runtime without options fails at load, not never.
        for backend, options in value.items():
            try:
                spec, _ = backend_spec(backend)
            except BackendUnavailable as exc:
                raise ValueError(str(exc)) from exc
            if options and spec.options_field is None:
                raise ValueError(f"{backend}: this runtime takes no runtime_options")
        return value

    def chain(self, task: str) -> list[str]:
        return list(self.backends.get(task) or self.backends.get("default") or ["onnx:cpu"])


def shipped_profile_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "profiles", here / "data" / "profiles"):
        if candidate.is_dir():
            return candidate
    return here.parent / "profiles"


def load_profile(path: Path) -> Profile:
    try:
        return Profile.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"profile {path}: {exc}") from exc
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ConfigError(f"profile {path}: {problems}") from exc


def load_profiles(extra_dirs: Iterable[Path] = ()) -> dict[str, Profile]:
    """Shipped profiles, then each user dir in order; a later file replaces one of the same name."""
    profiles: dict[str, Profile] = {}
    for directory in [shipped_profile_dir(), *extra_dirs]:
        for path in sorted(directory.glob("*.toml")):
            profile = load_profile(path)
            profiles[profile.name] = profile
    return profiles


@dataclass
class ProfileChoice:
    """The chosen profile, the hardware it was chosen for, and why."""

    profile: Profile
    hardware: Hardware
    reasons: list[str] = field(default_factory=list)

    def backends(self, task: str) -> list[str]:
        return self.profile.chain(task)

    def threads(self, override: int | None = None) -> int:
        return override or self.profile.threads or self.hardware.cores

    def to_json(self, budget_bytes: int) -> dict[str, Any]:
        tasks = sorted({*TASKS, *(k for k in self.profile.backends if k != "default")})
        return {
            "hardware": self.hardware.model_dump(mode="json"),
            "profile": self.profile.name,
            "backends": {task: self.backends(task) for task in tasks},
            "threads": self.threads(),
            "precision": self.profile.precision,
            "budget_bytes": budget_bytes,
            "reasons": list(self.reasons),
        }


def _runtime_notes(profile: Profile, runtimes: RuntimeDevices | None) -> list[str]:
    """Say up front which chain entries this process cannot use (the loader will skip them)."""
    if runtimes is None:
        return []
    notes = []
    providers = {p.removesuffix("ExecutionProvider").lower() for p in runtimes.onnx_providers}
    devices = {d.split(".")[0].lower() for d in runtimes.openvino_devices}
    for backend in sorted({b for chain in profile.backends.values() for b in chain}):
        runtime, variant = split_backend(backend)
        missing = (
            (runtime == "onnx" and variant not in providers)
            or (runtime == "openvino" and variant not in devices)
            or (runtime == "litert" and not runtimes.litert)
        )
        if missing:
            notes.append(
                f"{backend} is not available in this process; the chain falls back past it"
            )
    return notes


def select_profile(
    hardware: Hardware,
    profiles: dict[str, Profile],
    *,
    forced: str | None = None,
    runtimes: RuntimeDevices | None = None,
) -> ProfileChoice:
    """Pick the most specific matching profile (or the forced one) and explain the choice."""
    if forced is not None:
        if forced not in profiles:
            raise ConfigError(
                f"profile: no profile named {forced!r} (have {', '.join(sorted(profiles))})"
            )
        chosen = profiles[forced]
        return ProfileChoice(
            chosen,
            hardware,
            [
                f"profile {forced!r} forced by the `profile` setting",
                *_runtime_notes(chosen, runtimes),
            ],
        )
    matching = [p for p in profiles.values() if not p.match.failures(hardware)]
    if not matching:
        raise ConfigError("profile: no profile matches this board and no `generic` profile exists")
    best = max(p.match.specificity() for p in matching)
    winners = sorted(p.name for p in matching if p.match.specificity() == best)
    if len(winners) > 1:
        raise ConfigError(
            f"profile: {', '.join(winners)} match this board equally ({best} rules each); "
            "make one more specific or set `profile` explicitly"
        )
    chosen = profiles[winners[0]]
    reasons = [_why(chosen, hardware)]
    reasons += [
        f"{p.name} also matches but states fewer rules" for p in matching if p is not chosen
    ]
    reasons += _runtime_notes(chosen, runtimes)
    return ProfileChoice(chosen, hardware, reasons)


def _why(profile: Profile, hw: Hardware) -> str:
    rules = profile.match.model_dump()
    stated = [f"{k}={v}" for k, v in rules.items() if v]
    if not stated:
        board = hw.board or hw.cpu_model
        return f"no board-specific profile matched {board!r} ({hw.arch}); using {profile.name!r}"
    return f"{profile.name!r} matched on {', '.join(stated)}"


def describe(choice: ProfileChoice, budget_bytes: int) -> Sequence[str]:
    """Lines for the human-readable `edged profile` output."""
    hw = choice.hardware
    lines = [
        f"profile   {choice.profile.name}: {choice.profile.description}",
        f"board     {hw.board or '-'} | soc {hw.soc.get('machine') or hw.soc.get('soc_id') or '-'} | vendor {hw.vendor or '-'}",
        f"cpu       {hw.cpu_model} ({hw.arch}, {hw.cores} cores) isa {' '.join(hw.isa) or '-'}",
        f"devices   {', '.join(f'{a.kind}:{a.path}' for a in hw.accelerators) or 'no accelerators'}; "
        f"cameras {', '.join(c.path for c in hw.cameras) or 'none'}",
        f"memory    total {hw.mem_total_bytes or '?'} B, cgroup limit {hw.cgroup_memory_max or 'none'}, "
        f"budget {budget_bytes} B",
        f"threads   {choice.threads()}  precision {choice.profile.precision}",
    ]
    lines += [f"backends  {task}: {' > '.join(choice.backends(task))}" for task in TASKS]
    lines += [f"why       {reason}" for reason in choice.reasons]
    return lines


def choose(settings: Settings, sysroot: str | Path = "/") -> ProfileChoice:
    """Probe ``sysroot``, ask the live runtimes, and select a profile under ``settings``."""
    runtimes = probe_runtimes()
    hardware = probe(sysroot).model_copy(update={"runtime": runtimes})
    return select_profile(
        hardware, load_profiles(settings.profile_dirs), forced=settings.profile, runtimes=runtimes
    )
