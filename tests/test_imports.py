"""Imports point one way: the planner and the analysis run on login nodes and laptops, so
`scaling.analysis`, `scaling.launch` and the torch-free parts of `scaling` must import neither torch nor
deepspeed. Checked in a fresh interpreter, since this test process has torch loaded already."""

from __future__ import annotations

import json

import pytest
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_FREE = ["scaling.config", "scaling.errors", "scaling.counting", "scaling.ladder", "scaling.size_cli"]
WALKED = ["scaling.analysis", "scaling.launch"]  # every submodule, whatever exists

SCRIPT = """
import importlib, json, pkgutil, sys, traceback
errors, imported = {}, []
def load(name):
    try:
        importlib.import_module(name)
        imported.append(name)
    except Exception:
        errors[name] = traceback.format_exc(limit=3)
for name in %(torch_free)r:
    load(name)
for package in %(walked)r:
    load(package)
    if package in sys.modules:
        for info in pkgutil.walk_packages(sys.modules[package].__path__, package + "."):
            load(info.name)
heavy = sorted(m for m in ("torch", "deepspeed") if m in sys.modules)
print(json.dumps({"heavy": heavy, "errors": errors, "imported": imported}))
"""


def test_planner_and_analysis_do_not_import_torch():
    code = SCRIPT % {"torch_free": TORCH_FREE, "walked": WALKED}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}, "\n".join(f"{k}:\n{v}" for k, v in result["errors"].items())
    assert set(TORCH_FREE + WALKED) <= set(result["imported"])
    assert result["heavy"] == [], f"imported {result['heavy']}; modules checked: {result['imported']}"


def test_the_check_can_fail():
    # The same probe sees torch when a module does import it.
    code = SCRIPT % {"torch_free": ["scaling.models"], "walked": []}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["heavy"] == ["torch"]


def test_launch_and_analysis_import_only_under_the_project_namespace():
    # From the repository root the folders launch/ and analysis/ are on sys.path as top-level
    # names; importing them so would load a second copy of every module. They refuse, naming the
    # installed name.
    for name in ("launch", "analysis", "launch.plan", "analysis.fit"):
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode != 0 and "import scaling." in proc.stderr, (name, proc.stderr)
    proc = subprocess.run([sys.executable, "-c", "import scaling.launch.plan, scaling.analysis.fit"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_packaging_names_every_package_folder():
    # pyproject.toml lists packages by hand (for the package-dir mapping); a new subpackage that is
    # not listed would be missing from a wheel.
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs = set(tool["packages"]), tool.get("package-dir", {})
    found = set()
    for init in ROOT.glob("**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] not in ("scaling", "launch", "analysis"):
            continue
        top = {"launch": "scaling.launch", "analysis": "scaling.analysis"}.get(rel.parts[0], "scaling")
        found.add(".".join([top, *rel.parts[1:]]))
    assert found == listed, f"folders {sorted(found - listed)} not listed; listed but missing {sorted(listed - found)}"
    assert dirs == {"scaling.launch": "launch", "scaling.analysis": "analysis"}
