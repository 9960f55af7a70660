"""Bad input to `scaling-fit` gives a named message, never a traceback: binary or non-UTF-8
CSVs, values that overflow, a fit that explains little, garbage result.json files, and run
folders a study's plan.json does not list."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling.analysis import laws
from scaling.analysis.cli import main
from scaling.analysis.data import Data
from scaling.analysis.errors import DataError
from scaling.analysis.study import analyse_study
from test_analysis_io_cli import FIG4, write_study

ROOT = Path(__file__).resolve().parents[1]


def write_csv(path: Path, N, D, loss) -> Path:
    path.write_text("N,D,loss\n" + "".join(csv_row(*r) + "\n" for r in zip(N, D, loss)))
    return path


def csv_row(*values) -> str:
    return ",".join(repr(float(v)) for v in values)


def nd_grid():
    N, D = np.meshgrid(np.geomspace(1e7, 3e9, 8), np.geomspace(3e8, 1e11, 8))
    return N.ravel(), D.ravel()


def fit_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --- 1. files that are not UTF-8 text ---------------------------------------------------------

def test_binary_csv_is_named_by_the_real_command(tmp_path):
    # A spreadsheet saved as .xlsx is a zip: binary, with NUL bytes in its first line.
    p = tmp_path / "runs.csv"
    p.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xff\xfe" + bytes(range(256)))
    proc = subprocess.run([sys.executable, "-m", "scaling.analysis.cli", "--csv", str(p), "--out",
                           str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{str(p)!r} is a binary file, not text (a NUL byte at offset 5)" in proc.stderr
    assert "saved as UTF-8 text" in proc.stderr


def test_non_utf8_csv_names_the_byte_and_line(tmp_path, capsys):
    p = tmp_path / "latin1.csv"
    p.write_bytes("N,D,loss,note\n1e8,2e9,3.0,ok\n2e8,4e9,2.9,café\n".encode("latin-1"))
    rc, _, err = fit_cli(capsys, "--csv", p, "--out", tmp_path / "o", "--no-plots")
    assert rc == 2
    assert f"{str(p)!r} is not UTF-8 text: byte 0xe9 at line 3" in err
    assert "saved as UTF-8 text" in err


def test_utf8_csv_with_byte_order_mark_loads(tmp_path, capsys):
    N, D = nd_grid()
    p = write_csv(tmp_path / "bom.csv", N, D, laws.chinchilla(N, D))
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())  # as spreadsheet programs save UTF-8
    rc, out, _ = fit_cli(capsys, "--csv", p, "--out", tmp_path / "o", "--no-plots")
    assert rc == 0 and "64 runs" in out


# --- 2. overflow -------------------------------------------------------------------------------

def test_overflowing_6nd_names_the_columns_given(tmp_path, capsys):
    N, D = nd_grid()
    p = tmp_path / "huge.csv"
    rows = [csv_row(*r) for r in zip(N, D, laws.chinchilla(N, D))]
    rows[0] = "1e300,1e10,3.0"  # line 2
    rows[1] = "1e400,1e10,3.0"  # line 3: N itself is beyond a float
    p.write_text("N,D,loss\n" + "\n".join(rows) + "\n")
    rc, _, err = fit_cli(capsys, "--csv", p, "--out", tmp_path / "o", "--no-plots")
    assert rc == 2 and "Traceback" not in err
    assert ("line 2: C = 6*N*D overflows to inf with N='1e300', D='1e10' (the file has no C "
            "column, so C is derived from N and D; check their units, or give a C column)") in err
    assert "line 3: N='1e400' overflows a float" in err
    assert "C=inf" not in err and "C='" not in err  # no column C the file does not have
    # --skip-bad-rows drops those two and fits the rest.
    rc, out, _ = fit_cli(capsys, "--csv", p, "--out", tmp_path / "o", "--no-plots",
                         "--skip-bad-rows")
    assert rc == 0 and "62 runs" in out and "skipped bad row line 2: C = 6*N*D overflows" in out


def test_data_from_arrays_reports_a_derived_overflow():
    with pytest.raises(DataError, match=r"row 0: C = 6\*N\*D overflows to inf with N=1e\+300, "
                                        r"D=10000000000.0 \(C is derived from N and D"):
        Data.from_arrays([1e300, 1e8], [1e10, 1e9], [3.0, 2.9])


# --- 3. poor_fit -------------------------------------------------------------------------------

def test_poor_fit_fires_on_a_loss_of_1e300(tmp_path, capsys):
    N, D = nd_grid()
    loss = laws.chinchilla(N, D)
    loss[3] = 1e300
    rc, out, _ = fit_cli(capsys, "--csv", write_csv(tmp_path / "x.csv", N, D, loss),
                         "--out", tmp_path / "o", "--no-plots")
    assert rc == 0
    assert "poor_fit: R^2(log loss)=-0.0" in out and "times the data's noise scale" in out
    assert out.strip().splitlines()[-1].startswith("the fit is poor: ")
    doc = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert "poor_fit" in [d["code"] for d in doc["diagnostics"]] and doc["r2_log"] < 0


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # matplotlib's
def test_poor_fit_fires_on_every_loss_near_1e300_and_draws_what_it_can(tmp_path, capsys):
    # The fit degenerates (alpha = beta = 0): no compute-optimal allocation, no crash.
    N, D = nd_grid()
    csv = write_csv(tmp_path / "x.csv", N, D, laws.chinchilla(N, D) * 1e300)
    rc, out, err = fit_cli(capsys, "--csv", csv, "--out", tmp_path / "o")
    assert rc == 0, err
    assert "poor_fit: R^2(log loss)=" in out
    assert (tmp_path / "o" / "loss_vs_compute.png").exists()
    assert not (tmp_path / "o" / "optimal_allocation.png").exists()


def test_poor_fit_stays_quiet_on_a_right_law_with_noisy_runs(tmp_path, capsys):
    # R^2 0.85 comes from the noise (8.5% per run), not from the law: the residuals are at the
    # data's own noise scale and have no structure, so the fit is not poor.
    N, D = nd_grid()
    loss = laws.chinchilla(N, D) * np.exp(np.random.default_rng(0).normal(0, 0.085, N.size))
    rc, out, _ = fit_cli(capsys, "--csv", write_csv(tmp_path / "x.csv", N, D, loss),
                         "--out", tmp_path / "o", "--no-plots")
    doc = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert rc == 0 and 0.8 < doc["r2_log"] < 0.9
    assert "poor_fit" not in [d["code"] for d in doc["diagnostics"]]
    assert "the fit is poor" not in out


def test_poor_fit_stays_quiet_on_chinchillas_unfiltered_data(tmp_path, capsys):
    # All 245 runs of Chinchilla's Figure 4, the 5 outliers Epoch drops included (R^2 0.96).
    rc, out, _ = fit_cli(capsys, "--csv", FIG4, "--out", tmp_path / "o", "--no-plots")
    assert rc == 0 and "poor_fit:" not in out


# --- 4. garbage result.json ---------------------------------------------------------------------

GARBAGE = {
    "array": (b"[1, 2]", "holds a JSON array, not an object"),
    "string": (b'"x"', "holds a JSON string, not an object"),
    "empty_object": (b"{}", "lacks the key 'status'"),
    "bare_completed": (b'{"status": "completed", "params": 1000}',
                       "is completed but lacks tokens, flops, eval_loss or train_loss"),
    "torn": (b'{"status": "compl', "is not valid JSON"),
    "binary": (b"\x00\x01\xff", "is a binary file, not text"),
    "latin1": ('{"status": "completed", "note": "café"}'.encode("latin-1"), "is not UTF-8 text"),
}


def garbage_study(root: Path) -> Path:
    write_study(root)
    plan = json.loads((root / "plan.json").read_text())
    for name, (content, _) in GARBAGE.items():
        (root / "runs" / name).mkdir()
        (root / "runs" / name / "result.json").write_bytes(content)
        (root / "runs" / name / "metrics.jsonl").write_bytes(content + b"\n[1]\n")
        plan["runs"].append({"id": name, "dir": str(root / "runs" / name)})
    (root / "plan.json").write_text(json.dumps(plan))
    return root


@pytest.mark.parametrize("law", ["chinchilla", "isoflop"])
def test_garbage_result_json_skips_the_run_naming_the_file(tmp_path, capsys, law):
    root = garbage_study(tmp_path / "study")
    rc, out, err = fit_cli(capsys, root, "--law", law, "--out", tmp_path / "o", "--no-plots",
                           "--bootstrap", "20")
    assert rc == 0, err
    for name, (_, problem) in GARBAGE.items():
        path = str(root / "runs" / name / "result.json")
        line = [ln for ln in out.splitlines() if ln.startswith(f"skipped invalid run {name}:")]
        assert line, f"{name} not reported in:\n{out}"
        assert f"{path!r} {problem}" in line[0] and "rerun the run or delete its folder" in line[0]
    doc = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert {r["run_id"] for r in doc["skipped_runs"] if r["status"] == "invalid"} == set(GARBAGE)


def test_a_study_of_only_garbage_is_an_error_naming_every_file(tmp_path, capsys):
    for name in ("array", "bare_completed"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "result.json").write_bytes(GARBAGE[name][0])
    rc, _, err = fit_cli(capsys, tmp_path, "--out", tmp_path / "o", "--no-plots")
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "no completed runs" in err
    for name in ("array", "bare_completed"):
        assert f"{str(tmp_path / 'runs' / name / 'result.json')!r} {GARBAGE[name][1]}" in err


# --- 5. one view of a study: the runs of its plan -------------------------------------------------

def stale_study(root: Path) -> Path:
    """A study whose spec changed: `old` was launched by the earlier plan, then left behind."""
    write_study(root, budgets=(1e18, 1e19), n_sizes=5)
    old = root / "runs" / "old"
    old.mkdir()
    (old / "result.json").write_text(json.dumps({
        "status": "completed", "params": 3e7, "params_nonembedding": 2e7, "tokens": 5e9,
        "flops": 9e17, "eval_loss": 9.0, "train_loss": 9.0, "run_id": "old"}))
    return root


def test_study_folder_fits_only_its_planned_runs(tmp_path, capsys):
    root = stale_study(tmp_path / "study")
    rc, out, err = fit_cli(capsys, root, "--out", tmp_path / "o", "--no-plots")
    assert rc == 0, err
    assert f"not in plan: {root / 'runs' / 'old'} (left out; --include-unplanned fits it)" in out
    doc = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert doc["n_points"] == 10
    assert {(r["run_id"], r["status"]) for r in doc["skipped_runs"]} == {
        ("old", "not in plan"), ("crashed", "failed"), ("pending", "unfinished")}
    # The study's own report fits the same runs.
    study = analyse_study(root, n_boot=0, holdout=0)
    assert len(study.data) == doc["n_points"] and "old" not in study.data.run_id


def test_include_unplanned_and_a_folder_without_plan_fit_every_run(tmp_path, capsys):
    root = stale_study(tmp_path / "study")
    rc, out, _ = fit_cli(capsys, root, "--out", tmp_path / "o", "--no-plots", "--include-unplanned")
    assert rc == 0 and f"not in plan: {root / 'runs' / 'old'} (fitted, --include-unplanned)" in out
    assert json.loads((tmp_path / "o" / "fit.json").read_text())["n_points"] == 11
    (root / "plan.json").unlink()
    rc, out, _ = fit_cli(capsys, root, "--out", tmp_path / "p", "--no-plots")
    assert rc == 0 and "not in plan" not in out
    assert json.loads((tmp_path / "p" / "fit.json").read_text())["n_points"] == 11


@pytest.mark.parametrize("plan, problem", [
    ("[1]", "holds a JSON array, not an object with the planned 'runs'"),
    ("{}", "needs 'runs', a list of objects each with a string 'id'"),
    ('{"format": "scaling-plan/9", "runs": []}', "has format 'scaling-plan/9'"),
    ('{"runs": [', "is not valid JSON"),
])
def test_unreadable_plan_is_an_error_naming_it(tmp_path, capsys, plan, problem):
    root = stale_study(tmp_path / "study")
    (root / "plan.json").write_text(plan)
    rc, _, err = fit_cli(capsys, root, "--out", tmp_path / "o", "--no-plots")
    assert rc == 2 and "Traceback" not in err
    assert f"{str(root / 'plan.json')!r} {problem}" in err and "move it away" in err


def test_include_unplanned_needs_a_folder(tmp_path, capsys):
    rc, _, err = fit_cli(capsys, "--csv", FIG4, "--out", tmp_path, "--include-unplanned")
    assert rc == 2 and "--include-unplanned applies to a study FOLDER" in err
