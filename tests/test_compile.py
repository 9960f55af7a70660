"""train.compile=true: the compiled model trains the uncompiled run's loss curve, within 1e-4 per
step (inductor may reorder floating-point sums; the curves agree to about 1e-6 in practice), and
a run's id does not depend on it."""

from __future__ import annotations

import pytest

from scaling.rundir import read_metrics, read_result
from trainer_utils import data_cache, run_train  # noqa: F401 - fixture

TOLERANCE = 1e-4


@pytest.mark.slow
def test_compiled_run_matches_the_uncompiled_curve(data_cache, tmp_path):
    budget = "train.tokens=8192"  # 8 steps
    for name, flag in (("eager", "false"), ("compiled", "true")):
        proc = run_train(data_cache, tmp_path / name, budget, f"train.compile={flag}", timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    eager = [r["loss"] for r in read_metrics(tmp_path / "eager" / "metrics.jsonl")]
    compiled = [r["loss"] for r in read_metrics(tmp_path / "compiled" / "metrics.jsonl")]
    assert len(eager) == 8 and compiled == pytest.approx(eager, abs=TOLERANCE)
    assert read_result(tmp_path / "compiled")["eval_loss"] == pytest.approx(read_result(tmp_path / "eager")["eval_loss"],
                                                                          abs=TOLERANCE)  # fmt: skip
