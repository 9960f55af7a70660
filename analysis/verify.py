"""The pre-registered prediction of a study's verification run: `STUDY/verify/prediction.json`.

Once a study's runs are fitted, the launcher plans one larger run (the compute-optimal N and D at
`study.verify.compute_multiple` x the largest budget, N snapped to the ladder) and writes its
predicted loss here *before* the run trains. Then the run trains and the report compares.

The file is written once and never rewritten:
- it holds a fingerprint of the data it was made from (each fitted run's id and final loss); a
  relaunch whose data are the same keeps the file byte for byte;
- when the data change (new or retrained runs), the old prediction moves to
  `verify/history/` and a new one is made, for a new verification run;
- it holds a checksum of its own content, so a file edited by hand is found out: the report says
  that it changed and does not judge the run against it.

This module is the one reader and writer of the file; the launcher writes, the report reads.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from scaling.analysis.errors import AnalysisError

VERIFY_DIR = "verify"
PREDICTION_NAME = "prediction.json"
PREDICTION_FORMAT = 1


def verify_dir(study_dir: str | Path) -> Path:
    return Path(study_dir) / VERIFY_DIR


def data_fingerprint(run_ids: list[str], losses: list[float]) -> str:
    """A hash of the fitted runs and their final losses (to 6 significant digits)."""
    text = "\n".join(sorted(f"{rid}:{float(v):.6g}" for rid, v in zip(run_ids, losses)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _checksum(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def make_prediction(analysis: Any, run: Any, compute_multiple: float, largest_budget: float, level: float = 0.95) -> dict:
    """The prediction document for the planned verification run `run` (a RunSpec) from a study's
    analysis (`scaling.analysis.study.StudyAnalysis`), by approach 3 and, where the IsoFLOP
    profiles allow, approach 2. Raises AnalysisError when the study cannot predict yet."""
    from scaling.analysis.predict import predict_run

    a = analysis
    if a.fit is None or a.boot is None:
        raise AnalysisError(
            f"study.verify: the study's parametric law could not be fitted with intervals from its "
            f"{len(a.data.N)} completed run(s) ({'; '.join(a.problems) or 'no bootstrap'}); predicting a run "
            f"needs the law fitted with a residual to spare, i.e. 6 or more completed runs (its 5 parameters + 1; "
            f"3 or more budgets for approach 2 beside it), so add runs (sizes or budgets) before verifying"
        )
    iso = a.iso
    try:
        preds = predict_run(run.N, run.D, fit=a.fit, boot=a.boot, iso=iso, flops=a.flops, level=level)
    except AnalysisError:
        preds = predict_run(run.N, run.D, fit=a.fit, boot=a.boot, flops=a.flops, level=level)  # approach 3 alone
    from scaling.analysis.fit import compute_optimal

    c_verify = float(compute_multiple * largest_budget)
    opt = compute_optimal(a.fit, [c_verify], boot=a.boot, flops=a.flops)
    n_iv = opt.get("N_opt_interval")
    doc = {
        "format": PREDICTION_FORMAT,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "study": a.study,
        "data": {"runs": int(len(a.data.N)), "fingerprint": data_fingerprint(list(a.data.run_id), list(a.data.loss))},
        "compute_multiple": float(compute_multiple),
        "largest_budget": float(largest_budget),
        "C_verify": c_verify,
        "N_opt": {"value": float(opt["N_opt"][0]), "approach": "parametric",
                  "interval": [float(n_iv[0][0]), float(n_iv[1][0])] if n_iv is not None else None},
        "N_opt_isoflop": _isoflop_n_opt(iso, c_verify),
        "run": {"id": run.id, "N": int(run.N), "D": int(run.D), "C": float(run.C), "dir": f"runs/{run.id}"},
        "predictions": {k: p.to_json() for k, p in preds.items()},
    }  # fmt: skip
    doc["checksum"] = _checksum(doc)
    return doc


def _isoflop_n_opt(iso: Any, c: float) -> dict | None:
    """Approach 2's N_opt at compute c, extrapolated along N_opt ~ C^a, with its bootstrap band."""
    if iso is None or not math.isfinite(iso.a):
        return None
    lo, hi = iso.band([c], "N")
    return {"value": float(iso.N_opt(c)), "approach": "isoflop", "interval": [float(lo[0]), float(hi[0])]}


def read_prediction(study_dir: str | Path) -> tuple[dict | None, str]:
    """(the prediction, "") when the file is as written; (the file's content or None, why) when it
    is missing, unreadable or edited by hand."""
    path = verify_dir(study_dir) / PREDICTION_NAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "no prediction.json"
    except (OSError, ValueError) as e:
        return None, f"{path.name} cannot be read ({e})"
    if not isinstance(doc, dict) or doc.get("checksum") != _checksum(doc):
        return doc if isinstance(doc, dict) else None, (
            f"{PREDICTION_NAME} changed after it was written (its checksum does not match its content), so it is not "
            f"trusted as a prediction made before the run")  # fmt: skip
    return doc, ""


def record_prediction(study_dir: str | Path, doc: dict) -> tuple[dict, bool]:
    """Write `doc` as the study's prediction unless one made from the same data exists (or one
    edited by hand, which is kept for the report to flag). An earlier prediction made from other
    data moves to verify/history/. Returns (the prediction in force, whether it was written)."""
    from scaling.analysis.io import write_json_atomic

    folder = verify_dir(study_dir)
    path = folder / PREDICTION_NAME
    if path.exists():
        old, why = read_prediction(study_dir)
        if why or old is None:
            return old or {}, False
        if old["data"]["fingerprint"] == doc["data"]["fingerprint"]:
            return old, False
        history = folder / "history"
        history.mkdir(parents=True, exist_ok=True)
        stamp = old.get("written", "").replace(":", "")
        path.replace(history / f"prediction-{stamp}-{old['data']['fingerprint']}.json")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, doc)
    return doc, True


def verification(study_dir: str | Path) -> dict | None:
    """The prediction against the verification run's loss, for the report: None without a
    prediction; else {prediction, trusted, why, actual (None until the run completed), and per
    approach the relative error and whether the actual loss lies inside the interval}."""
    from scaling.contracts import RunStatus, result_if_readable

    doc, why = read_prediction(study_dir)
    if doc is None:
        return None if why == "no prediction.json" else {"prediction": None, "trusted": False, "why": why}
    out: dict = {"prediction": doc, "trusted": not why, "why": why, "actual": None, "approaches": {}}
    run = doc.get("run") or {}
    res = result_if_readable(verify_dir(study_dir) / run.get("dir", "runs/?"))
    if res is not None and res.status is RunStatus.COMPLETED and res.loss is not None and math.isfinite(res.loss):
        out["actual"] = float(res.loss)
        for name, p in (doc.get("predictions") or {}).items():
            lo, hi = p["prediction_interval"]
            out["approaches"][name] = {
                "predicted": p["loss"], "interval": [lo, hi],
                "relative_error": (p["loss"] - res.loss) / res.loss, "inside": bool(lo <= res.loss <= hi),
            }  # fmt: skip
    elif res is not None and res.status is RunStatus.FAILED:
        out["failed"] = res.error or "failed"
    return out
