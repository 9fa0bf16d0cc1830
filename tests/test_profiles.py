"""Hardware probe on fake board trees, and profile selection from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edged.config import load_settings
from edged.errors import ConfigError
from edged.hardware import RuntimeDevices, probe
from edged.profiles import load_profiles, select_profile
from edged.runtime import config_for
from edged.runtime.onnx import plan_session
from edged.testing import BOARD_KINDS, make_board, make_cgroup_tree, make_scale_model

KNOWN = [k for k in BOARD_KINDS if k != "unknown-riscv"]


@pytest.mark.parametrize("kind", KNOWN)
def test_each_fixture_board_selects_its_profile(tmp_path: Path, kind: str) -> None:
    hw = probe(make_board(tmp_path, kind))
    choice = select_profile(hw, load_profiles())
    assert choice.profile.name == kind
    assert choice.reasons[0].startswith(f"{kind!r} matched on")


def test_unknown_board_gets_generic_with_reason(tmp_path: Path) -> None:
    hw = probe(make_board(tmp_path, "unknown-riscv"))
    assert hw.arch == "riscv64"
    choice = select_profile(hw, load_profiles())
    assert choice.profile.name == "generic"
    assert "no board-specific profile matched" in choice.reasons[0]
    assert "StarFive" in choice.reasons[0]


def test_probe_reads_isa_soc_devices_and_cameras(tmp_path: Path) -> None:
    pi5 = probe(make_board(tmp_path / "pi5", "raspberry-pi-5"))
    assert {"neon", "asimd", "dotprod", "fp16"} <= set(pi5.isa)
    assert pi5.cpu_model == "Cortex-A76"
    assert pi5.cores == 4
    # the UVC metadata node (index 1) and the ISP are not cameras
    assert [c.path for c in pi5.cameras] == ["/dev/video0"]
    pi4 = probe(make_board(tmp_path / "pi4", "raspberry-pi-4"))
    assert [c.path for c in pi4.cameras] == ["/dev/video0"]  # bcm2835-codec is not a camera
    qcs = probe(make_board(tmp_path / "qcs", "qualcomm-qcs"))
    assert qcs.soc == {"machine": "QCS6490", "family": "Snapdragon", "soc_id": "497"}
    assert {"sve", "i8mm", "dotprod"} <= set(qcs.isa)
    assert [a.kind for a in qcs.accelerators] == ["hexagon"]
    intel = probe(make_board(tmp_path / "intel", "intel-igpu-npu"))
    assert [(a.kind, a.path) for a in intel.accelerators] == [
        ("intel-gpu", "/dev/dri/renderD128"),
        ("intel-npu", "/dev/accel/accel0"),
    ]
    assert "avx_vnni" in intel.isa
    assert intel.mem_total_bytes == 4_000_000 * 1024


def test_cgroup_v2_limit_and_tighter_parent(tmp_path: Path) -> None:
    root = make_board(tmp_path, "raspberry-pi-4", cgroup_max=900_000_000)
    assert probe(root).cgroup_memory_max == 900_000_000
    (root / "sys/fs/cgroup/system.slice/memory.max").write_text("700000000\n")
    assert probe(root).cgroup_memory_max == 700_000_000
    unlimited = make_board(tmp_path / "u", "raspberry-pi-4")
    assert probe(unlimited).cgroup_memory_max is None


def test_cgroup_v1_memory_controller(tmp_path: Path) -> None:
    root = make_board(tmp_path, "generic-x86")
    make_cgroup_tree(root, version=1, cgroup="/edged", limits={"/edged": "600000000"})
    limit = root / "sys/fs/cgroup/memory/edged/memory.limit_in_bytes"
    assert probe(root).cgroup_memory_max == 600_000_000
    limit.write_text("9223372036854771712\n")  # v1's "unlimited"
    assert probe(root).cgroup_memory_max is None


def _write_profile(directory: Path, name: str, body: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.toml").write_text(f'name = "{name}"\n{body}')


def test_user_profile_dir_overrides_shipped(tmp_path: Path) -> None:
    user = tmp_path / "profiles"
    _write_profile(
        user,
        "raspberry-pi-4",
        '[match]\narch = ["aarch64"]\nboard = ["Raspberry Pi 4"]\n'
        '[backends]\ndefault = ["onnx:cpu"]\n',
    )
    settings = load_settings(overrides={"profile_dirs": [str(user)]})
    hw = probe(make_board(tmp_path / "b", "raspberry-pi-4"))
    choice = select_profile(hw, load_profiles(settings.profile_dirs))
    assert choice.profile.name == "raspberry-pi-4"
    assert choice.backends("superres") == ["onnx:cpu"]


def test_equal_specificity_is_a_config_error(tmp_path: Path) -> None:
    user = tmp_path / "profiles"
    _write_profile(
        user,
        "my-pi",
        '[match]\narch = ["aarch64"]\nboard = ["Raspberry Pi 4"]\n'
        '[backends]\ndefault = ["onnx:cpu"]\n',
    )
    hw = probe(make_board(tmp_path / "b", "raspberry-pi-4"))
    with pytest.raises(ConfigError, match="my-pi, raspberry-pi-4 match this board equally"):
        select_profile(hw, load_profiles([user]))


def test_forced_profile_and_unknown_forced(tmp_path: Path) -> None:
    hw = probe(make_board(tmp_path, "generic-x86"))
    assert (
        select_profile(hw, load_profiles(), forced="raspberry-pi-5").profile.name
        == "raspberry-pi-5"
    )
    with pytest.raises(ConfigError, match="no profile named 'nope'"):
        select_profile(hw, load_profiles(), forced="nope")


def test_unavailable_backends_are_named_in_reasons(tmp_path: Path) -> None:
    hw = probe(make_board(tmp_path, "qualcomm-qcs"))
    runtimes = RuntimeDevices(onnx_providers=["CPUExecutionProvider"], litert=True)
    choice = select_profile(hw, load_profiles(), runtimes=runtimes)
    assert choice.backends("superres")[0] == "onnx:qnn"
    assert any(r.startswith("onnx:qnn is not available") for r in choice.reasons)


def test_qcs_profile_htp_mode_reaches_the_qnn_provider_options(tmp_path: Path) -> None:
    """profiles/qualcomm-qcs.toml says htp_performance_mode = "burst": the QNN EP gets it
    (planned, not run: there is no NPU here), and the other derived options stay."""
    choice = select_profile(probe(make_board(tmp_path, "qualcomm-qcs")), load_profiles())
    assert choice.profile.name == "qualcomm-qcs"
    backend = choice.backends("superres")[0]
    assert backend == "onnx:qnn"
    config = config_for(
        backend,
        precision="fp16",
        options=choice.profile.runtime_options.get(backend),  # what the loader passes
    )
    plan = plan_session(make_scale_model(tmp_path / "m.onnx"), config, None)
    [(provider, options), _cpu] = plan.providers
    assert provider == "QNNExecutionProvider"
    assert options["htp_performance_mode"] == "burst"
    assert options["backend_path"] == "libQnnHtp.so"
    assert options["enable_htp_fp16_precision"] == "1"


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ('[runtime_options."tensorrt:gpu"]\nx = "1"', "unknown backend 'tensorrt:gpu'"),
        ('[runtime_options."litert:xnnpack"]\nx = "1"', "litert:xnnpack: this runtime takes no"),
    ],
)
def test_runtime_options_for_no_backend_are_a_config_error(
    tmp_path: Path, options: str, problem: str
) -> None:
    _write_profile(tmp_path, "odd", f'[backends]\ndefault = ["onnx:cpu"]\n{options}')
    with pytest.raises(ConfigError, match=problem):
        load_profiles([tmp_path])


def _edged_profile(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged", "profile", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_json_on_fake_board_lowers_budget_to_cgroup(tmp_path: Path) -> None:
    root = make_board(tmp_path, "raspberry-pi-5", cgroup_max=1_000_000_000)
    proc = _edged_profile("--sysroot", str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["profile"] == "raspberry-pi-5"
    assert data["hardware"]["board"].startswith("Raspberry Pi 5")
    assert data["backends"]["segmentation"][0] == "litert:xnnpack"
    # cgroup 1.0 GB minus the default 200 MB reserve beats the profile's 1.5 GB
    assert data["budget_bytes"] == 800_000_000
    assert data["reasons"]


def test_cli_on_this_machine_is_sensible() -> None:
    proc = _edged_profile("--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["hardware"]["cores"] >= 1
    assert "CPUExecutionProvider" in data["hardware"]["runtime"]["onnx_providers"]
    assert 0 < data["budget_bytes"] <= 1_500_000_000
    assert set(data["backends"]) >= {"segmentation", "superres", "inpainting", "generation"}
    human = _edged_profile()
    assert human.returncode == 0
    assert "why" in human.stdout
