"""`scaling-study` exit codes, through the installed console script as a user runs it: every
config error (Hydra's own and the planner's) exits 2 with one line and no traceback; a failed run
exits 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("scaling-study")
STUDIES = ROOT / "conf" / "study"  # the choices an unknown study= is answered with


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    e = dict(os.environ, SCALING_CACHE=str(tmp_path_factory.mktemp("cache")), WANDB_MODE="disabled")
    e.pop("HYDRA_FULL_ERROR", None)
    return e


def _study(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    assert SCRIPT.exists(), f"{SCRIPT} is missing; install the project (make install)"
    return subprocess.run([str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, needles",
    [
        (["study.budgets.flopz=[1e10]"], ["study.budgets.flopz", "not in 'BudgetsConfig'", "--cfg job"]),
        (["study.nproc=two"], ["study.nproc=two", "could not be converted to Integer"]),
        (["study=nope"], ["study/nope", "pick one of " + ", ".join(sorted(p.stem for p in STUDIES.glob("*.yaml")))]),
        (["study.overrides=[data.path=/x]"], ["cannot parse the override", "'study.overrides=[\"data.path=DIR\"]'"]),
        # Sizes given, so only the launch would read the data: the planner reads its manifest first.
        (["study.data=shards", 'study.overrides=["data.path=/nonexistent/shards"]', "study.seq_len=64",
          "study.vocab_size=257", "study.tune.lrs=[]"], ["study.data='shards' (data.path='/nonexistent/shards'): cannot read its manifest",
                                    "no such folder"]),
        (["study.budgets.flops=[1e3]"], ["study.budgets.flops[0]=1e+03 is too small for any model",
                                         "the smallest budget that plans is 2.5e+10 FLOPs"]),
    ],
    ids=["misspelled key", "wrong type", "unknown choice", "unparsable override", "nonexistent data path",
         "budget too small"],
)  # fmt: skip
def test_config_errors_exit_2_with_one_line(env, tmp_path, args, needles):
    cache = tmp_path / "cache"  # a machine that has not measured its core split yet
    out = _study(dict(env, SCALING_CACHE=str(cache)), *args, f"study.dir={tmp_path / 'study'}",
                 "study.throughput_flops=1e9")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scaling-study: invalid config: "), out.stderr
    for needle in needles:
        assert needle in lines[0]
    assert not (tmp_path / "study").exists()  # nothing planned, written or launched
    assert "calibrating" not in out.stdout and not list(cache.glob("calibration-*"))  # nor measured first


def test_a_failed_run_exits_1(env, tmp_path, monkeypatch):
    """Runs that failed (as the trainer records it) and are not retried: exit 1, though nothing
    is left to fit, which is no config error."""
    from hydra import compose, initialize_config_dir

    from scaling.launch.config import register_configs, to_dataclass
    from scaling.launch.plan import CONF_DIR, make_plan

    args = ["study.data=synthetic", "study.sizes.targets=[5e3,2e4]", "study.budgets.flops=[1e10]",
            f"study.dir={tmp_path / 'study'}", "study.throughput_flops=1e9", "study.tune.lrs=[]", "study.overrides=[]"]  # fmt: skip
    register_configs()
    monkeypatch.setenv("SCALING_CACHE", env["SCALING_CACHE"])  # the same data, so the same run ids
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        plan = make_plan(to_dataclass(compose(config_name="study_app", overrides=args)).study)
    for r in plan.runs:
        Path(r.dir).mkdir(parents=True)
        (Path(r.dir) / "result.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom"}))
    out = _study(env, *args)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{len(plan.runs)} failed" in out.stdout and "launching 0" in out.stdout
    assert "Traceback" not in out.stderr and "no completed runs" in out.stderr
