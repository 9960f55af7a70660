"""Where a study's wall time goes: training steps, evaluation, and the fixed cost of each run.

Runs a study of many tiny runs with the local launcher (default: the default study,
`isoflop_tiny`, 15 runs) and prints
  - the study's training throughput: tokens trained in all runs / the launch phase's wall time.
    This is the figure to compare before and after a change: a slower step must not look like
    less overhead, and this figure only rises when runs finish sooner;
  - the fixed cost per run, outside training steps and evaluation, by phase (mean, min, max);
  - the share of each run's time spent in training steps (mean and min), and the most that share
    could be with no fixed cost at all: steps / (steps + evaluation).

    python bench/study_overhead.py [--study isoflop_tiny] [--dir DIR] [--json OUT.json] [OVERRIDES...]
    python bench/study_overhead.py --from-dir STUDY_DIR [--json OUT.json]   # a finished study
    python bench/study_overhead.py --compare BEFORE.json AFTER.json
    # smoke studies: 3 runs in about half a minute, or 5 in one to two minutes, on 2 cores
    python bench/study_overhead.py 'study.budgets.flops=[2e10]'
    python bench/study_overhead.py 'study.budgets.flops=[6e10]'

OVERRIDES are `scaling-study` overrides (e.g. `launcher.parallel=1`, `study.sizes.per_budget=3`).
Compare two measurements only with the same plan and the same threads per run and runs at once:
`--compare` checks and warns.

How the launch is timed. `scaling.launch.study.launch_study` is called in this process and timed around
the call alone: planning, the lock and state reads, every run's process, and the launcher's
polling are in it; composing the config, the fit and the report are not (the CLI's
`report.enabled=false` would leave the CLI's own start in the figure). With `--from-dir` there
is no such measurement: the wall time is the runs' span, from the first run's start to the last
run's end as the launcher recorded them (launch.json), so planning is not in it.

Where each run's time comes from. Every run's result.json has `timing` (written by the trainer):
startup_s, setup_s, deepspeed_init_s, resume_and_wandb_s, train_s, finish_s, and (since the
timing was extended) steps_s and eval_s, both inside train_s. The launcher's launch.json records
when it started the process and when it saw it end; the process's life minus the trainer's marks
is the time after the trainer's last mark: writing result.json, the interpreter's exit, and the
launcher's polling. A run's fixed cost is everything but steps_s and eval_s:

    fixed = startup + setup + deepspeed_init + resume_and_wandb + (train - steps - eval)
            + finish + (life - sum of marks) + its share of the launcher's idle slots between runs

Idle slots after the last run started (the tail, when fewer runs remain than slots) and before
the first one are the study's, not a run's: they are printed apart, and are in the throughput.

This process imports launch/ and scaling.rundir and scaling.errors only: it never imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from scaling.errors import ScalingError
from scaling.rundir import read_json

FORMAT = "study-overhead/1"
# Goals from the issue that asked for this benchmark.
GOAL_FIXED_S = 2.0
GOAL_SPEEDUP = 1.3
GOAL_STEPS_SHARE = 0.90

# The fixed phases of a run, in the order they happen, with what each holds.
FIXED_PHASES = [
    ("startup_s", "process start to trainer (interpreter, imports)"),
    ("setup_s", "setup (device, process group, lease, data, plan)"),
    ("deepspeed_init_s", "model and DeepSpeed engine"),
    ("resume_and_wandb_s", "resume and wandb"),
    ("loop_overhead_s", "loop outside steps and eval (data, metrics, ckpt)"),
    ("finish_s", "finish (wandb)"),
    ("exit_s", "process exit and launcher gaps (result, exit, poll)"),
    ("slot_idle_s", "launcher: idle slot between runs (a run's share)"),
]
WORK_PHASES = [("steps_s", "training steps"), ("eval_s", "evaluation")]
MARKS = ("startup_s", "setup_s", "deepspeed_init_s", "resume_and_wandb_s", "train_s", "finish_s")
# A process life shorter than its marks by more than this is not the same attempt (another host's
# clock, a launch.json from a later launch): its launcher-side gap is unknown.
CLOCK_SLACK_S = 1.0


@dataclass
class RunTimes:
    """One run's times, in seconds; None where the run directory does not say."""

    id: str
    status: str
    tokens: float
    params: Optional[int]
    phases: dict[str, Optional[float]] = field(default_factory=dict)
    started: Optional[float] = None  # time.time() when the launcher started the process
    ended: Optional[float] = None  # time.time() when the launcher saw it end
    threads: Optional[int] = None

    @property
    def marks_s(self) -> Optional[float]:
        values = [self.phases.get(k) for k in MARKS]
        return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]

    @property
    def life_s(self) -> Optional[float]:
        return None if self.started is None or self.ended is None else self.ended - self.started

    @property
    def fixed_s(self) -> Optional[float]:
        values = [self.phases.get(k) for k, _ in FIXED_PHASES]
        return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]

    @property
    def steps_share(self) -> Optional[float]:
        """steps_s / the process's life as the launcher saw it (the trainer's marks where unknown)."""
        total = self.life_s if self.phases.get("exit_s") is not None else self.marks_s
        steps = self.phases.get("steps_s")
        return None if steps is None or not total else steps / total

    @property
    def steps_share_ceiling(self) -> Optional[float]:
        """steps_s / (steps_s + eval_s): the share with no fixed cost at all, the most that cutting
        overhead can give this run while it evaluates as it does."""
        steps, ev = self.phases.get("steps_s"), self.phases.get("eval_s")
        return None if steps is None or ev is None or steps + ev <= 0 else steps / (steps + ev)


_THREADS = re.compile(r"train\.num_threads=(\d+)")


def _last_launch_threads(run_dir: Path) -> Optional[int]:
    """train.num_threads from the last command the local launcher logged in launch.log."""
    try:
        lines = [line for line in (run_dir / "launch.log").read_text(errors="replace").splitlines()
                 if line.startswith("=== ")]  # fmt: skip
    except OSError:
        return None
    found = _THREADS.findall(lines[-1]) if lines else []
    return int(found[-1]) if found else None


def read_run(run_id: str, run_dir: Path) -> Optional[RunTimes]:
    """A run's times from result.json and launch.json, or None when it has no result."""
    result = read_json(run_dir / "result.json")
    if not isinstance(result, dict):
        return None
    timing = result.get("timing") or {}
    phases: dict[str, Optional[float]] = {k: timing.get(k) for k in (*MARKS, "steps_s", "eval_s")}
    train, steps, evals = phases["train_s"], phases["steps_s"], phases["eval_s"]
    phases["loop_overhead_s"] = None if None in (train, steps, evals) else train - steps - evals
    run = RunTimes(run_id, str(result.get("status")), float(result.get("tokens") or 0), result.get("params"), phases,
                   threads=_last_launch_threads(run_dir))  # fmt: skip
    launch = read_json(run_dir / "launch.json") or {}
    if launch.get("launcher") == "local" and launch.get("time") and launch.get("ended"):
        # launch.json's time is stamped just after the process started (milliseconds later), with
        # the same clock as `ended`; the trainer measures its own startup from the process's start.
        run.started, run.ended = float(launch["time"]), float(launch["ended"])
    gap = None if run.life_s is None or run.marks_s is None else run.life_s - run.marks_s
    phases["exit_s"] = None if gap is None or gap < -CLOCK_SLACK_S else max(0.0, gap)
    phases["slot_idle_s"] = None  # set by the study, which knows the slots
    return run


def run_dirs_of(study_dir: Path) -> dict[str, Path]:
    """The study's runs, id -> run directory: the plan's (plan.json), else every runs/*/."""
    plan = read_json(study_dir / "plan.json")
    if isinstance(plan, dict) and plan.get("runs"):
        return {r["id"]: Path(r["dir"]) for r in plan["runs"]}
    return {p.name: p for p in sorted((study_dir / "runs").glob("*/")) if p.is_dir()}


def covered_s(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Run-seconds inside [lo, hi]: the sum over runs of each one's overlap with the window."""
    return sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in intervals)


def _events(intervals: list[tuple[float, float]]) -> list[tuple[float, int]]:
    # An end sorts before a start at the same instant: a slot handed straight on is not two runs.
    return sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most runs alive at once."""
    best = alive = 0
    for _, step in _events(intervals):
        alive += step
        best = max(best, alive)
    return best


def short_s(intervals: list[tuple[float, float]], slots: int, lo: float, hi: float) -> float:
    """Wall seconds inside [lo, hi] with fewer than `slots` runs alive."""
    total, alive, prev = 0.0, 0, lo
    for t, step in _events(intervals):
        if t > prev and prev < hi and alive < slots:
            total += min(t, hi) - max(prev, lo)
        prev = max(prev, t)
        alive += step
    return total + (max(0.0, hi - prev) if alive < slots else 0.0)


def _stats(values: list[Optional[float]]) -> Optional[dict[str, float]]:
    if not values or any(v is None for v in values):
        return None
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}  # type: ignore[arg-type]


def summarize(
    runs: list[RunTimes],
    study: str,
    study_dir: Path,
    slots: Optional[int],
    launch_start: Optional[float] = None,
    launch_end: Optional[float] = None,
    overrides: Optional[list[str]] = None,
) -> dict[str, Any]:
    """The figures, as a JSON-ready dict. `launch_start`/`launch_end` bound the measured launch;
    without them the launch wall time is the runs' span."""
    done = [r for r in runs if r.status == "completed"]
    intervals = [(r.started, r.ended) for r in done if r.started is not None and r.ended is not None]
    slots = slots or (max_overlap(intervals) if intervals else None)
    notes: list[str] = []
    first_start = min((s for s, _ in intervals), default=None)
    last_start = max((s for s, _ in intervals), default=None)
    last_end = max((e for _, e in intervals), default=None)
    if launch_start is not None and launch_end is not None:
        wall_s, wall_source = launch_end - launch_start, "launch_study timed in-process, planning included"
    elif first_start is not None and last_end is not None:
        wall_s, wall_source = last_end - first_start, "the runs' span from scaling.launch.json, planning not included"
    else:
        wall_s, wall_source = None, "no launch.json with start and end times"

    study_level: dict[str, Optional[float]] = {"before_first_run_s": None, "after_last_run_s": None,
                                               "tail_slot_s": None, "tail_wall_s": None}  # fmt: skip
    complete_intervals = bool(done) and len(intervals) == len(done)
    if slots and complete_intervals:
        # Slots left idle while runs were still waiting to start are the launcher's cost per run;
        # after the last start they are the tail, the study's.
        idle_between = max(0.0, slots * (last_start - first_start) - covered_s(intervals, first_start, last_start))
        for r in done:
            r.phases["slot_idle_s"] = idle_between / len(done)
        tail_s = last_end - last_start
        study_level["tail_slot_s"] = max(0.0, slots * tail_s - covered_s(intervals, last_start, last_end))
        study_level["tail_wall_s"] = short_s(intervals, slots, last_start, last_end)
        if launch_start is not None and launch_end is not None:
            study_level["before_first_run_s"] = first_start - launch_start
            study_level["after_last_run_s"] = launch_end - last_end
    elif done:
        notes.append("some runs have no launch.json with start and end times: launcher gaps are n/a")
    if any(r.phases.get("steps_s") is None for r in done):
        notes.append("some result.json files predate steps_s/eval_s in `timing`: loop overhead, fixed cost and "
                     "steps share are n/a")  # fmt: skip
    if len(done) < len(runs):
        notes.append(f"{len(runs) - len(done)} run(s) did not complete; only completed runs are counted")

    tokens = sum(r.tokens for r in done)
    phases = {k: _stats([r.phases.get(k) for r in done]) for k, _ in FIXED_PHASES + WORK_PHASES}
    phases["life_s"] = _stats([r.life_s for r in done])
    step_rates = [r.tokens / r.phases["steps_s"] for r in done if r.phases.get("steps_s")]
    step_rate = statistics.fmean(step_rates) if step_rates and len(step_rates) == len(done) else None
    threads = sorted({r.threads for r in done if r.threads is not None})
    return {
        "format": FORMAT,
        "study": study,
        "dir": str(study_dir),
        "host": socket.gethostname(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "overrides": overrides or [],
        "runs": len(runs),
        "runs_completed": len(done),
        "plan": sorted([r.params, r.tokens] for r in done),  # what was trained, to check two measurements match
        "threads_per_run": threads[0] if len(threads) == 1 else (threads or None),
        "runs_at_once": slots,
        "tokens": tokens,
        "launch_wall_s": wall_s,
        "launch_wall_source": wall_source,
        "study_tokens_per_s": tokens / wall_s if wall_s else None,
        "step_tokens_per_s_per_run": step_rate,
        "phases_s": phases,
        "fixed_cost_s": _stats([r.fixed_s for r in done]),
        "steps_share": _stats([r.steps_share for r in done]),
        "steps_share_of": "its process life" if complete_intervals else "the sum of its timing marks",
        "steps_share_ceiling": _stats([r.steps_share_ceiling for r in done]),
        "study_level_s": study_level,
        "notes": notes,
        "per_run": [{"id": r.id, "status": r.status, "tokens": r.tokens, "life_s": r.life_s, "fixed_s": r.fixed_s,
                     "steps_share": r.steps_share, "steps_share_ceiling": r.steps_share_ceiling, **r.phases}
                    for r in runs],  # fmt: skip
    }


def _s(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_report(fig: dict[str, Any]) -> str:
    threads = fig["threads_per_run"]
    out = [
        f"study {fig['study']} in {fig['dir']}: {fig['runs']} runs ({fig['runs_completed']} completed), "
        f"{threads if threads is not None else 'n/a'} thread(s) per run, {fig['runs_at_once'] or 'n/a'} runs at once, "
        f"{fig['cores']} cores",
        f"launch wall time: {_s(fig['launch_wall_s'], 1)} s ({fig['launch_wall_source']})",
        f"study training throughput: {fig['tokens']:,.0f} tokens / {_s(fig['launch_wall_s'], 1)} s = "
        f"{_s(fig['study_tokens_per_s'], 0)} tokens/s",
        "",
        f"{'per run, seconds':58s} {'mean':>7s} {'min':>7s} {'max':>7s}",
    ]

    def row(label: str, st: Optional[dict[str, float]], tail: str = "") -> str:
        if st is None:
            return f"  {label:56s} {'n/a':>7s}"
        return f"  {label:56s} {st['mean']:7.2f} {st['min']:7.2f} {st['max']:7.2f}{tail}"

    for key, label in FIXED_PHASES:
        out.append(row(label, fig["phases_s"][key]))
    out.append(row("fixed cost per run", fig["fixed_cost_s"], f"   (goal: mean <= {GOAL_FIXED_S:g} s)"))
    for key, label in WORK_PHASES:
        out.append(row(label, fig["phases_s"][key]))
    out.append(row("process life, as the launcher saw it", fig["phases_s"]["life_s"]))
    share = fig["steps_share"] or {}
    out += [
        "",
        f"share of each run's time in training steps (of {fig['steps_share_of']}): mean {_pct(share.get('mean'))}, "
        f"min {_pct(share.get('min'))} (goal: each >= {GOAL_STEPS_SHARE:.0%})",
    ]
    ceiling = fig.get("steps_share_ceiling")  # absent in measurements written before it existed
    if ceiling:
        capped = sum(1 for r in fig["per_run"]
                     if r.get("steps_share_ceiling") is not None and r["steps_share_ceiling"] < GOAL_STEPS_SHARE)
        out.append(f"  with no fixed cost at all (steps / (steps + evaluation)): min {_pct(ceiling['min'])}; "
                   f"{capped} run(s) below {GOAL_STEPS_SHARE:.0%} even then, by their evaluation alone")
    out += [
        f"training-step throughput per run (tokens / steps_s, mean over runs): "
        f"{_s(fig['step_tokens_per_s_per_run'], 0)} tokens/s",
    ]
    sl = fig["study_level_s"]
    out.append(
        f"study level (in the launch wall time, not in any run): {_s(sl['before_first_run_s'])} s before the first "
        f"run (planning, lock, state reads, the launcher's start), {_s(sl['after_last_run_s'])} s after the last; tail: "
        f"{_s(sl['tail_slot_s'], 1)} idle slot-s over the last {_s(sl['tail_wall_s'], 1)} s, when fewer runs "
        f"were left than slots"
    )
    out += [f"note: {n}" for n in fig["notes"]]
    return "\n".join(out)


def compare(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Ratios of two measurements (after against before), and warnings where they differ in what
    they measured."""
    out = []
    for key, what in (("plan", "the plan (params, tokens of each run)"), ("threads_per_run", "threads per run"),
                      ("runs_at_once", "runs at once"), ("cores", "cores"), ("host", "host"),
                      ("launch_wall_source", "how the launch was timed")):  # fmt: skip
        if before.get(key) != after.get(key):
            shown = "" if key == "plan" else f": {before.get(key)} -> {after.get(key)}"
            out.append(f"warning: the two measurements differ in {what}{shown}; the ratios compare unlike things")

    def ratio(a: Optional[float], b: Optional[float]) -> str:
        return "n/a" if not a or b is None else f"{b / a:.2f}x"

    tb, ta = before.get("study_tokens_per_s"), after.get("study_tokens_per_s")
    out.append(f"study tokens/s: {_s(tb, 0)} -> {_s(ta, 0)}, {ratio(tb, ta)} (goal >= {GOAL_SPEEDUP:g}x)")
    wb, wa = before.get("launch_wall_s"), after.get("launch_wall_s")
    out.append(f"launch wall time: {_s(wb, 1)} s -> {_s(wa, 1)} s")
    fb, fa = (before.get("fixed_cost_s") or {}).get("mean"), (after.get("fixed_cost_s") or {}).get("mean")
    out.append(f"fixed cost per run (mean): {_s(fb)} s -> {_s(fa)} s, before/after {ratio(fa, fb)} "
               f"(goal after <= {GOAL_FIXED_S:g} s)")  # fmt: skip
    sb, sa = (before.get("steps_share") or {}), (after.get("steps_share") or {})
    out.append(f"steps share per run: mean {_pct(sb.get('mean'))} -> {_pct(sa.get('mean'))}, min {_pct(sb.get('min'))} "
               f"-> {_pct(sa.get('min'))} (goal: each >= {GOAL_STEPS_SHARE:.0%})")  # fmt: skip
    rb, ra = before.get("step_tokens_per_s_per_run"), after.get("step_tokens_per_s_per_run")
    out.append(f"training-step tokens/s per run: {_s(rb, 0)} -> {_s(ra, 0)}, {ratio(rb, ra)} (a slower step shows here)")
    out.append("")
    out.append(f"{'mean seconds per run':58s} {'before':>7s} {'after':>7s}")
    for key, label in FIXED_PHASES + WORK_PHASES + [("life_s", "process life")]:
        b, a = ((d.get("phases_s") or {}).get(key) or {} for d in (before, after))
        out.append(f"  {label:56s} {_s(b.get('mean')):>7s} {_s(a.get('mean')):>7s}")
    return "\n".join(out)


def run_study(study: str, study_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Compose the study as `scaling-study` does, launch it locally in this process, time the
    launch, and summarize its runs."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from scaling.launch.config import register_configs, to_dataclass
    from scaling.launch.local import parallel_runs
    from scaling.launch.plan import CONF_DIR
    from scaling.launch.study import launch_study

    register_configs()
    # Inside the Hydra context, as in `scaling-study`: the planner composes each run's trainer
    # config in it instead of initializing Hydra once per run.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = to_dataclass(compose(config_name="study_app", overrides=[f"study={study}", *overrides,
                                                                           f"study.dir={study_dir}"]))  # fmt: skip
        except (HydraException, OmegaConfBaseException) as e:  # a misspelled key: its first line names it
            raise SystemExit(f"study_overhead: invalid config: {str(e).strip().splitlines()[0]}") from None
        if cfg.launcher.name != "local":
            raise SystemExit(f"study_overhead: launcher={cfg.launcher.name}; this benchmark times the local launcher")
        if cfg.study.dry_run:
            raise SystemExit("study_overhead: study.dry_run=true launches nothing; drop it")
        t0 = time.time()
        outcome = launch_study(cfg.study, cfg.launcher, cfg.cluster)
        t1 = time.time()
    launched = [r for r in outcome.plan.runs if r.id in set(outcome.launched)]
    runs = [t for t in (read_run(r.id, Path(r.dir)) for r in launched) if t is not None]
    fig = summarize(runs, cfg.study.name, study_dir, parallel_runs(cfg.launcher.parallel, launched), t0, t1,
                    overrides=overrides)  # fmt: skip
    fig["launcher_parallel"] = cfg.launcher.parallel
    if len(runs) < len(launched):
        fig["notes"].append(f"{len(launched) - len(runs)} launched run(s) wrote no result.json")
    return fig


def from_dir(study_dir: Path) -> dict[str, Any]:
    dirs = run_dirs_of(study_dir)
    if not dirs:
        raise SystemExit(f"study_overhead: {study_dir} holds no runs (no plan.json, no runs/*/)")
    runs = [t for t in (read_run(rid, d) for rid, d in dirs.items()) if t is not None]
    plan = read_json(study_dir / "plan.json") or {}
    fig = summarize(runs, plan.get("study", study_dir.name), study_dir, None)
    launches: dict[str, int] = {}
    try:
        for line in (study_dir / "launches.jsonl").read_text().splitlines():
            rid = (json.loads(line) if line.strip() else {}).get("run")
            launches[rid] = launches.get(rid, 0) + 1
    except (OSError, ValueError):
        pass
    again = sum(1 for n in launches.values() if n > 1)
    if again:
        fig["notes"].append(f"{again} run(s) were launched more than once: their timing is the last attempt's, "
                            f"their tokens the whole run's")  # fmt: skip
    if len(runs) < len(dirs):
        fig["notes"].append(f"{len(dirs) - len(runs)} of {len(dirs)} planned run(s) have no result.json")
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="extra arguments are scaling-study overrides, e.g. launcher.parallel=1")  # fmt: skip
    ap.add_argument("--study", default="isoflop_tiny", help="the study config (conf/study/NAME.yaml)")
    ap.add_argument("--dir", type=Path, help="the study folder, new or empty (default: a fresh temporary folder)")
    ap.add_argument("--from-dir", type=Path, metavar="STUDY_DIR", help="analyse a finished study; launch nothing")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here, for --compare")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="compare two --json outputs")
    ap.add_argument("overrides", nargs="*", help="scaling-study overrides")
    args = ap.parse_args()

    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        print(compare(before, after))
        return
    if args.from_dir:
        if args.overrides or args.dir:
            ap.error("--from-dir analyses a finished study: it takes no overrides and no --dir")
        fig = from_dir(args.from_dir.resolve())
    else:
        if any(o.lstrip("+~").startswith("study.dir=") for o in args.overrides):
            ap.error("set the study folder with --dir, not study.dir=")
        study_dir = (args.dir or Path(tempfile.mkdtemp(prefix="study-overhead-")) / "study").resolve()
        if study_dir.exists() and any(study_dir.iterdir()):
            # A relaunch skips completed runs and resumes partial ones: its time is not a study's.
            ap.error(f"{study_dir} is not empty; pass a new --dir, or --from-dir {study_dir} to analyse it")
        try:
            fig = run_study(args.study, study_dir, args.overrides)
        except ScalingError as e:  # a config error names its key; the traceback adds nothing
            raise SystemExit(f"study_overhead: {e}") from None
        if "torch" in sys.modules:  # the launcher process must stay light, as on a login node
            fig["notes"].append("torch was imported in the launcher process")
    print()
    print(format_report(fig))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(fig, indent=1) + "\n")
        print(f"figures: {args.json}")


if __name__ == "__main__":
    main()
