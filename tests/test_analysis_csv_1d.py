"""One-variable laws from a CSV that holds only that column and loss."""

import json

import numpy as np
import pytest

from scaling.analysis.cli import main
from scaling.analysis.errors import DataError
from scaling.analysis.extrapolate import holdout_check
from scaling.analysis.io import load_csv


def write(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(
        ",".join(f"{v:.17g}" for v in r) + "\n" for r in rows))
    return path


def d_only(tmp_path):
    rng = np.random.default_rng(0)
    D = np.geomspace(1e8, 1e11, 12)
    loss = (1.5 + 80 * D ** -0.25) * np.exp(rng.normal(0, 0.003, D.size))
    return write(tmp_path / "d.csv", ("D", "loss"), zip(D, loss))


def test_power_law_in_D_from_a_file_without_N_or_C(tmp_path, capsys):
    csv = d_only(tmp_path)
    rc = main(["--csv", str(csv), "--law", "power_law", "--x", "D", "--out", str(tmp_path / "o"),
               "--holdout-largest", "2", "--holdout-by", "D"])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert doc["params"]["alpha"] == pytest.approx(0.25, rel=0.1)
    assert doc["holdout"]["by"] == "D" and doc["holdout_rmse_log"] < 0.02
    assert "C_derived_from_6ND" not in doc and "6 N D" not in out
    assert (tmp_path / "o" / "loss_vs_compute.png").exists()


def test_holdout_defaults_to_the_laws_input_and_works_on_any_axis(tmp_path):
    data = load_csv(d_only(tmp_path), x="D")
    assert data.absent == ("N", "C") and not data.c_derived
    res = holdout_check(data, k=2, by="D", law="power_law", x="D")
    assert set(res.D) == set(np.sort(data.D)[-2:])
    with pytest.raises(DataError, match="has no C column"):
        data.column("C")


def test_C_is_never_invented_silently(tmp_path, capsys):
    rng = np.random.default_rng(1)
    N = np.geomspace(1e7, 1e9, 10)
    D = 20 * N
    loss = (1.8 + 300 * (6 * N * D) ** -0.1) * np.exp(rng.normal(0, 0.002, N.size))
    csv = write(tmp_path / "nd.csv", ("N", "D", "loss"), zip(N, D, loss))
    assert main(["--csv", str(csv), "--law", "power_law", "--x", "C", "--out",
                 str(tmp_path / "o"), "--no-plots"]) == 0
    assert "C = 6 N D is derived" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "fit.json").read_text())["C_derived_from_6ND"] is True


def test_a_missing_input_column_is_named(tmp_path, capsys):
    csv = d_only(tmp_path)
    assert main(["--csv", str(csv), "--law", "power_law", "--x", "N", "--out",
                 str(tmp_path / "o"), "--no-plots"]) != 0
    assert "lacks column(s) ['N']" in capsys.readouterr().err
