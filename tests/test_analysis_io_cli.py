"""Loading CSVs and run folders, writing fit.json, and the scaling-fit CLI."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling.analysis import laws
from scaling.analysis.cli import main
from scaling.analysis.errors import DataError
from scaling.analysis.io import load_csv, load_curves, load_runs, write_json_atomic

FIG4 = Path(__file__).parent / "data" / "chinchilla_fig4.csv"
TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def write_study(root: Path, budgets=(1e17, 1e18, 1e19, 1e20), n_sizes=7, seed=0) -> Path:
    """A study folder as the planner and the trainer write it, plus one failed and one
    unfinished run."""
    rng = np.random.default_rng(seed)
    runs = root / "runs"
    for budget in budgets:
        n_opt, _, _ = laws.chinchilla_optimal(budget, **TRUE)
        for n in n_opt * np.geomspace(1 / 5, 5, n_sizes):
            n = int(n)
            d = budget / (6 * n)
            run_id = f"b{budget:.0e}_n{n}"
            run = runs / run_id
            run.mkdir(parents=True)
            tokens = np.geomspace(d / 100, d, 20)
            curve = laws.chinchilla(n, tokens, **TRUE)
            with (run / "metrics.jsonl").open("w") as fh:
                for step, (t, l) in enumerate(zip(tokens, curve)):
                    fh.write(json.dumps({"step": step, "tokens": t, "flops": 6 * n * t,
                                         "loss": l, "lr": 1e-3, "tokens_per_s": 1e5}) + "\n")
            loss = float(curve[-1] * np.exp(rng.normal(0, 0.002)))
            (run / "result.json").write_text(json.dumps({
                "status": "completed", "family": "gpt", "params": n,
                "params_nonembedding": int(n * 0.9), "tokens": d, "flops": 6 * n * d,
                "flops_convention": "6ND", "train_loss": loss + 0.01, "eval_loss": loss,
                "steps": 100, "world_size": 1, "zero_stage": 0, "wall_time_s": 1.0,
                "run_id": run_id, "budget_flops": budget,
            }))
    (runs / "crashed").mkdir()
    (runs / "crashed" / "result.json").write_text(json.dumps(
        {"status": "failed", "error": "CUDA out of memory", "params": 10}))
    (runs / "pending").mkdir()
    (runs / "pending" / "metrics.jsonl").write_text('{"step": 0, "flops": 1.0, "loss": 9.0}\n')
    # The planner's plan.json, reduced to what the analysis reads: every run above is planned.
    ids = sorted(p.name for p in runs.iterdir())
    (root / "plan.json").write_text(json.dumps({
        "format": "scaling-plan/1", "study": "synthetic",
        "runs": [{"id": i, "dir": str(runs / i)} for i in ids]}))
    return root


# --- CSV ---------------------------------------------------------------------------------

def test_load_csv_reads_columns(tmp_path):
    data = load_csv(FIG4)
    assert len(data) == 245 and data.C[0] == pytest.approx(9.9938528e18)
    p = tmp_path / "nc.csv"
    p.write_text("N,D,loss\n1e8,2e9,3.0\n2e8,4e9,2.8\n")
    data = load_csv(p)
    assert data.C.tolist() == [6 * 1e8 * 2e9, 6 * 2e8 * 4e9]


def test_load_csv_names_every_bad_row(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("N,D,loss\n1e8,2e9,3.0\n2e8,,2.8\n3e8,4e9,nan\n-1,4e9,2.5\n4e8,5e9,2.4\n")
    with pytest.raises(DataError) as err:
        load_csv(p)
    msg = str(err.value)
    assert "3 bad row(s)" in msg
    assert "line 3: D missing" in msg and "line 4: loss='nan'" in msg and "line 5: N='-1'" in msg
    data = load_csv(p, skip_bad=True)
    assert len(data) == 2 and len(data.rejected) == 3


def test_load_csv_missing_column(tmp_path):
    p = tmp_path / "cols.csv"
    p.write_text("params,tokens,loss\n1,2,3\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['N', 'D'\]"):
        load_csv(p)


# --- run folders -------------------------------------------------------------------------

def test_load_runs_skips_failed_and_unfinished(tmp_path):
    root = write_study(tmp_path / "study")
    data, skipped = load_runs(root)
    assert len(data) == 28
    assert {(s.run_id, s.status) for s in skipped} == {("crashed", "failed"), ("pending", "unfinished")}
    assert "CUDA out of memory" in [s.reason for s in skipped if s.status == "failed"][0]
    assert np.isfinite(data.budget).all()
    nonemb, _ = load_runs(root, n_key="params_nonembedding")
    assert np.allclose(nonemb.N, np.floor(data.N * 0.9), rtol=1e-6)
    # Run directories given directly (no runs/ level) are found too.
    flat, _ = load_runs(root / "runs")
    assert len(flat) == 28


def test_load_runs_rejects_bad_values_by_run(tmp_path):
    root = write_study(tmp_path / "study", budgets=(1e18,), n_sizes=3)
    bad = sorted((root / "runs").glob("b*"))[0]
    res = json.loads((bad / "result.json").read_text())
    res["eval_loss"] = None
    res["train_loss"] = -1.0
    (bad / "result.json").write_text(json.dumps(res))
    data, skipped = load_runs(root)
    assert len(data) == 2
    assert any(s.status == "invalid" and "loss=-1.0" in s.reason for s in skipped)


def test_load_runs_with_no_completed_runs(tmp_path):
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "metrics.jsonl").write_text("")
    with pytest.raises(DataError, match="no completed runs"):
        load_runs(tmp_path)


def test_load_curves(tmp_path):
    root = write_study(tmp_path / "study", budgets=(1e18,), n_sizes=3)
    curves = load_curves(root)
    assert len(curves) == 3 and all(c.flops.size == 20 for c in curves)


def test_write_json_atomic(tmp_path):
    path = tmp_path / "fit.json"
    write_json_atomic(path, {"x": np.float64(1.5), "a": np.arange(2), "nan": math.nan})
    assert json.loads(path.read_text()) == {"x": 1.5, "a": [0, 1], "nan": None}
    write_json_atomic(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["fit.json"]  # no temp file left behind


# --- CLI ---------------------------------------------------------------------------------

def test_cli_chinchilla_on_fig4(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["--csv", str(FIG4), "--law", "chinchilla", "--out", str(out),
               "--drop-highest-loss", "5", "--bootstrap", "200", "--holdout-largest", "3"])
    assert rc == 0
    doc = json.loads((out / "fit.json").read_text())
    assert doc["law"] == "chinchilla" and doc["n_points"] == 240
    assert set(doc["params"]) == {"E", "A", "B", "alpha", "beta"}
    assert set(doc["derived"]) == {"a", "b", "G"}
    assert doc["params"]["E"] == pytest.approx(1.8172, rel=0.005)
    assert set(doc["stderr"]) >= {"E", "A", "B", "alpha", "beta", "a"}
    assert len(doc["interval"]["alpha"]) == 2
    assert isinstance(doc["diagnostics"], list) and doc["objective"] > 0
    assert len(doc["holdout"]["runs"]) == 3
    for name in ("loss_vs_compute", "residuals", "predicted_vs_actual", "optimal_allocation"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").exists()
    printed = capsys.readouterr().out
    assert "alpha" in printed and "stderr" in printed


def test_cli_isoflop_on_study_folder(tmp_path, capsys):
    root = write_study(tmp_path / "study")
    out = tmp_path / "iso"
    assert main([str(root), "--law", "isoflop", "--out", str(out), "--bootstrap", "200"]) == 0
    doc = json.loads((out / "fit.json").read_text())
    assert doc["law"] == "isoflop" and len(doc["budgets"]) == 4
    a_true = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert doc["params"]["a"] == pytest.approx(a_true, abs=0.03)
    assert "envelope" in doc
    assert {r["run_id"] for r in doc["skipped_runs"]} == {"crashed", "pending"}
    assert (out / "isoflop.png").exists() and (out / "optimal_allocation.pdf").exists()
    printed = capsys.readouterr().out
    assert "skipped failed run crashed" in printed


@pytest.mark.parametrize(
    "rows, message",
    [
        ("N,D,loss\n1e8,2e9,nan\n", "line 2: loss='nan'"),
        ("N,D,loss\n1e8,2e9,3\n2e8,3e9,2.9\n", "needs at least 6 runs"),
        ("N,D,loss\n" + "".join(f"1e8,{d},{3 - i / 10}\n" for i, d in enumerate(np.geomspace(1e9, 1e11, 8))),
         "N takes a single value"),
    ],
    ids=["nan-row", "too-few-points", "single-model-size"],
)
def test_cli_bad_input_exits_2_with_message(tmp_path, capsys, rows, message):
    p = tmp_path / "in.csv"
    p.write_text(rows)
    rc = main(["--csv", str(p), "--law", "chinchilla", "--out", str(tmp_path / "o"), "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o" / "fit.json").exists()


def test_cli_missing_file_and_no_input(tmp_path, capsys):
    assert main(["--csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--out", str(tmp_path)]) == 2
    assert "--csv FILE or a study FOLDER" in capsys.readouterr().err


def test_importing_analysis_loads_neither_torch_nor_deepspeed():
    code = (
        "import sys, importlib, pkgutil, scaling.analysis as analysis\n"
        "for m in pkgutil.iter_modules(analysis.__path__):\n"
        "    importlib.import_module('scaling.analysis.' + m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'deepspeed')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
