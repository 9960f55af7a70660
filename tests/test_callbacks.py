"""The loop's seams: a callback named in config is imported by the trainer and sees every hook, in
order, across a stop for requeue and the resume that finishes the run."""

from __future__ import annotations

import json
import subprocess
from dataclasses import fields

import pytest

from scaling.config import TrainConfig
from scaling.errors import ConfigError
from scaling.rundir import EXIT_REQUEUE, read_result
from scaling.runid import is_result_key
from scaling.trainer.callbacks import load_callbacks
from trainer_utils import ROOT, data_cache, env, train_cmd  # noqa: F401 - fixture

def test_callbacks_do_not_change_the_run_id():
    assert "callbacks" in {f.name for f in fields(TrainConfig)}
    assert not is_result_key("train.callbacks")


def test_a_callback_from_config_sees_every_hook_in_order(data_cache, tmp_path):
    run = tmp_path / "run"
    # 8 steps; evaluation and a checkpoint every 4; the probe sends SIGTERM at step 6 of the first attempt.
    args = ("train.tokens=8192", "train.eval_every_tokens=4096", "train.checkpoint_every_tokens=4096",
            "train.callbacks=[callback_probe:HookRecorder]")  # fmt: skip
    e = env(data_cache) | {"PYTHONPATH": str(ROOT / "tests")}
    codes = [subprocess.run(train_cmd(run, *args), cwd=ROOT, env=e, capture_output=True, text=True,
                            timeout=300).returncode for _ in range(2)]  # fmt: skip
    assert codes == [EXIT_REQUEUE, 0]
    hooks = [tuple(json.loads(line)) for line in (run / "hooks.jsonl").read_text().splitlines()]
    assert hooks == [
        ("step", 1, True), ("step", 2, True), ("step", 3, True),
        ("eval", 4), ("step", 4, True), ("checkpoint", 4, "step00000004"),
        ("step", 5, True), ("step", 6, True),
        ("signal", "SIGTERM"), ("checkpoint", 6, "step00000006"), ("end", None),  # stopped for requeue
        ("step", 7, True), ("eval", 8), ("step", 8, True), ("checkpoint", 8, "step00000008"),  # the final step
        ("end", "completed"),  # resumed and finished
    ]  # fmt: skip
    assert read_result(run)["steps"] == 8


def test_a_callback_that_cannot_be_loaded_is_named_with_the_fix(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    (probe,) = load_callbacks(["callback_probe:HookRecorder"])
    assert type(probe).__name__ == "HookRecorder"
    bad = ["callback_probe", "no_such_module:Thing", "callback_probe:Missing", "callback_probe:NotACallback",
           "callback_probe:NeedsArguments"]  # fmt: skip
    with pytest.raises(ConfigError) as e:
        load_callbacks(bad)
    problems = e.value.problems
    assert len(problems) == len(bad)
    for i, (path, fix) in enumerate(zip(bad, ("package.module:ClassName", "PYTHONPATH", "check the name",
                                                "subclass Callback", "defaults for every argument"))):  # fmt: skip
        assert problems[i].startswith(f"train.callbacks[{i}]={path!r}") and fix in problems[i], problems[i]
