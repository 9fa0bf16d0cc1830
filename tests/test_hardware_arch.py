"""The probe's architecture and board where the kernel and the userland disagree (qemu-user,
a 32-bit userland on a 64-bit kernel) and where the device tree is not at /proc/device-tree."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import edged.testing.paths as shared_paths
from edged.hardware import probe, userland_arch
from edged.profiles import load_profiles, select_profile
from edged.runtime.onnx import _cpu_signature
from edged.testing import make_board

# ELF e_machine of the interpreter running the tests: what the userland really is.
_ELF_MACHINES = {(2, 0x3E): "x86_64", (1, 0x03): "i686", (2, 0xB7): "aarch64", (1, 0x28): "arm"}


def _elf_arch(path: str) -> str:
    header = Path(path).read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    return _ELF_MACHINES[(header[4], int.from_bytes(header[18:20], "little"))]


@pytest.mark.arm64
def test_live_arch_is_the_interpreters_not_the_kernels() -> None:
    """Under qemu-user /proc/sys/kernel/arch says x86_64 while this python is an aarch64 ELF."""
    elf = _elf_arch(sys.executable)
    arch = probe("/").arch
    assert arch == userland_arch()
    assert arch == elf or (elf == "arm" and arch.startswith("arm"))
    assert _cpu_signature().startswith(f"{arch}|")  # the onnx compile-cache key agrees


@pytest.mark.parametrize(("kind", "profile"), [("raspberry-pi-4", "raspberry-pi-4"), ("raspberry-pi-5", "raspberry-pi-5")])  # fmt: skip
def test_emulated_pi_root_under_an_x86_kernel(tmp_path: Path, kind: str, profile: str) -> None:
    """What the arm64 CI root shows: the host kernel's arch, an ARM cpuinfo, the model only
    under /sys/firmware/devicetree/base (no /proc/device-tree link in a chroot)."""
    root = make_board(tmp_path, kind, kernel_arch="x86_64", device_tree="sys")
    assert not (root / "proc/device-tree").exists()
    hw = probe(root)
    assert hw.arch == "aarch64"
    assert hw.board is not None
    assert hw.board.startswith(f"Raspberry Pi {kind[-1]} Model B")
    assert hw.compatible[0] == f"raspberrypi,{kind[-1]}-model-b"
    assert hw.cpu_model == {"4": "Cortex-A72", "5": "Cortex-A76"}[kind[-1]]
    assert select_profile(hw, load_profiles()).profile.name == profile


def test_board_from_the_cpuinfo_model_line_alone(tmp_path: Path) -> None:
    root = make_board(tmp_path, "raspberry-pi-4", device_tree="cpuinfo")
    assert not (root / "proc/device-tree").exists()
    assert not (root / "sys/firmware").exists()
    hw = probe(root)
    assert (hw.board, hw.compatible) == ("Raspberry Pi 4 Model B Rev 1.4", [])
    assert hw.cpu_model == "Cortex-A72"  # the Model line names the board, not the core
    assert hw.vendor == "raspberrypi"
    assert select_profile(hw, load_profiles()).profile.name == "raspberry-pi-4"


def test_proc_device_tree_wins_over_sys(tmp_path: Path) -> None:
    root = make_board(tmp_path, "raspberry-pi-5")
    other = root / "sys/firmware/devicetree/base"
    other.mkdir(parents=True)
    (other / "model").write_text("Something Else\0")
    assert probe(root).board == "Raspberry Pi 5 Model B Rev 1.0"


def test_x86_cpuinfo_model_numbers_are_not_a_board(tmp_path: Path) -> None:
    root = make_board(tmp_path, "generic-x86")
    info = root / "proc/cpuinfo"
    info.write_text(info.read_text().replace("vendor_id", "model\t\t: 154\nvendor_id"))
    hw = probe(root)
    assert (hw.board, hw.arch) == (None, "x86_64")


def test_32bit_userland_on_a_64bit_kernel(tmp_path: Path) -> None:
    """Raspberry Pi OS 32-bit on the 64-bit kernel: kernel/arch says aarch64, the compat
    cpuinfo a 32-bit reader gets (thumb/vfp hwcaps, CPU architecture 8) says armv7l."""
    root = make_board(tmp_path, "raspberry-pi-4", kernel_arch="aarch64")
    compat = "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt lpae evtstrm crc32"
    info = root / "proc/cpuinfo"
    info.write_text(info.read_text().replace("fp asimd evtstrm crc32 cpuid", compat))
    hw = probe(root)
    assert hw.arch == "armv7l"
    assert "neon" in hw.isa
    assert select_profile(hw, load_profiles()).profile.name != "raspberry-pi-4"  # aarch64 only


def test_kernel_arch_kept_when_cpuinfo_agrees(tmp_path: Path) -> None:
    root = make_board(tmp_path, "raspberry-pi-4", kernel_arch="aarch64")
    assert probe(root).arch == "aarch64"
    riscv = make_board(tmp_path / "rv", "unknown-riscv")  # cpuinfo without flags/Features
    assert probe(riscv).arch == "riscv64"
    x86 = make_board(tmp_path / "x86", "generic-x86", kernel_arch="x86_64")
    assert probe(x86).arch == "x86_64"


def _paths_module(tree: Path) -> Path:
    target = tree / "edged" / "testing" / "paths.py"
    target.parent.mkdir(parents=True)
    target.write_text(Path(shared_paths.__file__).read_text())
    return target


def _shared_dir_of(module: Path, env: dict[str, str]) -> str:
    code = textwrap.dedent(f"""
        import runpy
        print(runpy.run_path({str(module)!r})["SHARED_DIR"])
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_shared_dir_from_checkout_env_or_nothing(tmp_path: Path) -> None:
    checkout = tmp_path / "work" / "edged-src"
    (checkout / "pyproject.toml").parent.mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("[project]\nname = 'edged'\n")
    in_checkout = _paths_module(checkout)
    wheel = _paths_module(tmp_path / "venv" / "lib" / "python3.11" / "site-packages")
    assert _shared_dir_of(in_checkout, {}) == str(tmp_path / "work" / "shared")
    assert _shared_dir_of(wheel, {}) == "/EDGED_SHARED_DIR-is-not-set"
    assert _shared_dir_of(wheel, {"EDGED_SHARED_DIR": "/srv/shared"}) == "/srv/shared"
