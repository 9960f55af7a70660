"""`scaling-status STUDY_DIR`: the state of every run of a study, as a table.

    scaling-status studies/isoflop_tiny            # state, N, D, C, loss, Slurm job id
    scaling-status studies/isoflop_tiny --wait     # follow until no run is queued or running
    scaling-status studies/isoflop_tiny --json     # one JSON object per run

It reads plan.json, each run directory and (once) the Slurm queue. It imports neither Hydra nor
torch, so it answers in about a second for a study of 1,000 runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from scaling.contracts import PLAN_NAME, ContractError, RunSpec, RunStatus, read_plan
from scaling.launch.state import ACTIVE, STATES, RunState, branch_ready, read_states


def _plan_runs(study_dir: Path) -> list[RunSpec]:
    try:
        plan = read_plan(study_dir)
    except ContractError as e:
        raise SystemExit(f"scaling-status: {e}; relaunch the study to rewrite it")
    if plan is None:
        raise SystemExit(f"scaling-status: {study_dir / PLAN_NAME} does not exist; is {study_dir} a study folder "
                         f"made by scaling-study?")  # fmt: skip
    return plan.runs


def study_states(study_dir: str | Path) -> tuple[list[RunSpec], dict[str, RunState]]:
    runs = _plan_runs(Path(study_dir))
    # A plan written by hand may name no directory: the planner puts each run in STUDY/runs/<id>.
    return runs, read_states({r.id: r.dir or str(Path(study_dir) / "runs" / r.id) for r in runs})


def _si(x: Optional[float]) -> str:
    if x is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if x >= div:
            v = x / div
            return f"{v:.2g}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return f"{x:.2g}"


def format_status(runs: list[RunSpec], states: dict[str, RunState]) -> str:
    from scaling.launch.plan import format_table

    rows = []
    for r in runs:
        st = states[r.id]
        loss = "-" if st.loss is None else f"{st.loss:.4f}"
        progress = ""
        if st.state in (RunStatus.RUNNING, RunStatus.PARTIAL) and st.tokens and r.D:
            progress = f" ({min(1.0, st.tokens / r.D):.0%})"
        if st.state == RunStatus.PLANNED and not branch_ready(r):
            progress = " (waits for its fork checkpoint)"
        c = "-" if r.C is None else f"{r.C:.3g}"
        rows.append([r.id, st.state + progress, _si(r.N), _si(r.D), c, loss, st.job_id or "-"])
    counts = {s: sum(1 for st in states.values() if st.state == s) for s in STATES}
    headers = ["id", "state", "N", "D", "C", "loss", "job"]
    if any(r.extra.get("role") for r in runs):  # a study with cooldown branches: which is which
        headers.append("role")
        for row, r in zip(rows, runs):
            role = r.extra.get("role", "-")
            row.append(f"branch of {r.extra['parent']} at step {r.extra.get('fork_step')}" if role == "branch" else role)
    lines = [format_table(headers, rows), ""]
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no runs")
    for r in runs:
        st = states[r.id]
        if st.error and st.state in (RunStatus.FAILED, RunStatus.PARTIAL):
            lines.append(f"{st.state}: {r.id}: {st.error.strip().splitlines()[-1]}")
    return "\n".join(lines)


def follow(study_dir: str | Path, poll_s: float = 10.0, timeout_s: Optional[float] = None,
           echo: Callable[[str], None] = print) -> dict[str, RunState]:
    """Poll until no run is queued or running; print a line whenever the counts change."""
    start, last = time.time(), None
    while True:
        runs, states = study_states(study_dir)
        counts = tuple(sum(1 for st in states.values() if st.state == s) for s in STATES)
        if counts != last:
            echo(time.strftime("%H:%M:%S ") + ", ".join(f"{n} {s}" for s, n in zip(STATES, counts) if n))
            last = counts
        if not any(st.state in ACTIVE for st in states.values()):
            return states
        if timeout_s is not None and time.time() - start > timeout_s:
            return states
        time.sleep(poll_s)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="scaling-status", description="Print the state of a study's runs.")
    p.add_argument("study_dir", help="the study folder (study.dir), holding plan.json and runs/")
    p.add_argument("--wait", action="store_true", help="follow the study until no run is queued or running")
    p.add_argument("--poll-s", type=float, default=10.0, help="seconds between polls with --wait")
    p.add_argument("--json", action="store_true", help="print one JSON object per run instead of a table")
    args = p.parse_args(argv)
    study = Path(args.study_dir)
    # A study's phases, each with its own plan.json: the tune sweep, the study's runs, the
    # verification run. Only those that exist are shown; with none, _plan_runs says why.
    phases = [(name, study / sub) for name, sub in PHASES if (study / sub / PLAN_NAME).exists()] or [("study", study)]
    for name, folder in phases:
        if args.wait:
            follow(folder, args.poll_s)
        runs, states = study_states(folder)
        if args.json:
            for r in runs:
                st = states[r.id]
                print(json.dumps({"id": r.id, "phase": name, "state": st.state, "N": r.N, "D": r.D, "C": r.C,
                                  "loss": st.loss, "job_id": st.job_id, "error": st.error}))  # fmt: skip
        else:
            if len(phases) > 1:
                print(f"{name}:")
            print(format_status(runs, states) + ("\n" if len(phases) > 1 else ""))
    sys.exit(0)


PHASES = (("tune phase", "tune"), ("study", ""), ("verification run", "verify"))


if __name__ == "__main__":
    main()
