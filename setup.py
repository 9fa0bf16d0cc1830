"""Build hook: ship the model catalogue (models/*.toml) and profiles (profiles/*.toml) inside
the wheel as edged/data/{models,profiles}, where edged looks when it is not run from a source
checkout. Everything else is in pyproject.toml."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {"models": "edged/data/models", "profiles": "edged/data/profiles"}


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        for source, target in SHIPPED.items():
            out = Path(self.build_lib) / target
            out.mkdir(parents=True, exist_ok=True)
            for path in sorted((ROOT / source).glob("*.toml")):
                shutil.copy2(path, out / path.name)


setup(cmdclass={"build_py": BuildPyWithData})
