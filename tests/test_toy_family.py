"""A family registered from a test module alone (tests/toy_family.py, no edit to the package) is
planned, trained for a few steps by the real trainer, and fitted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import toy_family
from scaling.families import unregister
from scaling.launch.config import BudgetsConfig, PowerLaw, RulesConfig, SizesConfig, StudySpec
from scaling.launch.plan import make_plan, write_plan
from scaling.rundir import read_result
from trainer_utils import ROOT, data_cache, env  # noqa: F401 - fixture

# One process trains every run one after another, as a warm worker does (each run's startup
# would otherwise dominate this test).
TRAIN = """
import json, sys
import toy_family
from scaling.train import run_overrides
toy_family.register_toy()
sys.exit(max(run_overrides(overrides) for overrides in json.loads(sys.argv[1])))
"""


@pytest.fixture
def toy():
    """The toy family, registered for this test only (other tests must see the package's alone)."""
    yield toy_family.register_toy()
    unregister(toy_family.NAME)


def test_a_family_from_a_test_module_plans_trains_and_fits(data_cache, tmp_path, toy):
    spec = StudySpec(
        name="toy", family="toy", data="digits", dir=str(tmp_path / "study"),
        sizes=SizesConfig(targets=[2e3, 4e3, 8e3, 1.6e4], count="total"),
        budgets=BudgetsConfig(tokens_per_param=[1.0]),
        rules=RulesConfig(lr=PowerLaw(coef=3e-3, exponent=0.0), batch_tokens=PowerLaw(coef=64, exponent=0.0)),
        overrides=["train.eval_tokens=256", "logger.wandb.mode=disabled"],
    )  # fmt: skip
    plan = make_plan(spec)
    write_plan(plan)
    assert [r.family for r in plan.runs] == ["toy"] * 4
    widths = [r.shape["width"] for r in plan.runs]
    assert widths == sorted(widths) and len(set(widths)) == 4

    proc = subprocess.run([sys.executable, "-c", TRAIN, json.dumps([r.overrides for r in plan.runs])], cwd=ROOT,
                          env={**env(data_cache), "PYTHONPATH": str(ROOT / "tests")},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for run in plan.runs:
        result = read_result(run.dir)
        assert result["status"] == "completed" and result["family"] == "toy" and result["params"] == run.params_total

    out = tmp_path / "fit"
    proc = subprocess.run([sys.executable, "-m", "scaling.analysis.cli", spec.dir, "--law", "power_law", "--x", "N",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    fit = json.loads((out / "fit.json").read_text())
    assert fit["law"] == "power_law" and fit["n_points"] == 4, fit
