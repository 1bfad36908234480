"""The installer's pinned requirements: exact, complete, and in step with pyproject.toml."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO_ROOT

PINS = REPO_ROOT / "installer" / "pins"


def _pins(path) -> dict[str, Version]:
    pinned = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert re.fullmatch(r"[A-Za-z0-9._-]+==[^\s;]+", line), f"{path.name}: not an exact pin: {line}"
        name, version = line.split("==")
        pinned[canonicalize_name(name)] = Version(version)
    return pinned


def test_every_runtime_dependency_is_pinned_to_a_version_pyproject_allows():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = _pins(PINS / "requirements.txt")
    torch = _pins(PINS / "requirements-torch-cu128.txt")
    assert "torch" not in pinned, "torch comes from the PyTorch index, not PyPI"
    pinned.update(torch)
    stale = []
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name not in pinned:
            stale.append(f"{req.name} is not pinned")
        elif not req.specifier.contains(pinned[name], prereleases=True):
            stale.append(f"{req.name}=={pinned[name]} does not satisfy {req.specifier}")
    assert not stale, "pins are stale, run bash installer/refresh_pins.sh: " + "; ".join(stale)


def test_both_torch_builds_are_the_same_exact_version():
    cu128 = _pins(PINS / "requirements-torch-cu128.txt")["torch"]
    cpu = _pins(PINS / "requirements-torch-cpu.txt")["torch"]
    assert cu128.local == "cu128" and cpu.local == "cpu"
    assert cu128.public == cpu.public


def test_the_gpu_install_gets_triton_windows_of_the_torch_triton_line():
    triton = _pins(PINS / "requirements-triton-cu128.txt")
    assert set(triton) == {"triton-windows"}
    torch = _pins(PINS / "requirements-torch-cu128.txt")["torch"]
    # torch 2.13 is built against Triton 3.7 (its Linux wheels pin triton 3.7.x); a torch bump must
    # bump this pin too, or the kernels meet a Triton that torch was not built with.
    assert (torch.major, torch.minor) == (2, 13) and (triton["triton-windows"].major, triton["triton-windows"].minor) == (3, 7)
    assert "requirements-triton-cu128.txt" in (REPO_ROOT / "installer" / "build.sh").read_text(encoding="utf-8")
