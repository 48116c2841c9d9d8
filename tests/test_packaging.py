"""The package builds as pip builds it, with no deprecation from setuptools, and its metadata
carries the license as an SPDX expression with the license file."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_builds_without_deprecations_and_names_its_license(tmp_path: Path) -> None:
    # -v: pip shows the build backend's output, where setuptools prints its deprecations.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path),
         str(ROOT)], capture_output=True, text=True, timeout=280, check=False)
    output = built.stdout + built.stderr
    assert built.returncode == 0, output[-3000:]
    assert "SetuptoolsDeprecationWarning" not in output, output[-3000:]
    [wheel] = tmp_path.glob("buildrunner-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        fields = archive.read(metadata).decode().splitlines()
        [license_file] = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        text = archive.read(license_file).decode()
    assert "License-Expression: MIT" in fields and "License-File: LICENSE" in fields
    assert text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
