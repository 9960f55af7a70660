"""`scaling-study`: plan a study and launch it, locally or on Slurm. Relaunching is idempotent.

    scaling-study study=isoflop_tiny launcher=local
    scaling-study study=isoflop_tiny study.dry_run=true            # print the plan, launch nothing
    scaling-study study=NAME launcher=slurm cluster=NAME           # submit; does not block
    scaling-study study=NAME launcher=slurm cluster=NAME launcher.print_script=true
    scaling-status STUDY_DIR                                        # follow it

A relaunch reads every run's directory (and the Slurm queue) first. It skips completed runs and
runs that are queued or running, resumes partial ones from their checkpoints, lists failed runs
with their errors and retries them only with `study.retry_failed=true`. A lock on the study
folder keeps two launchers from submitting the same run.

`launch_study` is the launch step as a function, so a later step (fitting, a report) can follow a
blocking local launch.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from scaling.contracts import RunStatus
from scaling.launch.cost import check_budget, format_cost, plan_cost
from scaling.launch.config import ClusterConfig, LauncherConfig, ReportConfig, StudyAppConfig, StudySpec
from scaling.launch.plan import Plan, format_plan, make_plan, set_estimates, throughput_for, write_plan
from scaling.launch.state import ACTIVE, archive_failed, read_states
from scaling.errors import ConfigError, ScalingError


@dataclass
class LaunchOutcome:
    """What a launch did. `states` is each run's state after the launch (for a blocking local
    launch, the final state)."""

    plan: Plan
    dry_run: bool = False
    launched: list[str] = field(default_factory=list)
    skipped_completed: list[str] = field(default_factory=list)
    skipped_active: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # id -> error, failed runs not retried
    job_ids: dict[str, str] = field(default_factory=dict)  # id -> Slurm job id
    exit_codes: dict[str, int] = field(default_factory=dict)  # local runs
    states: dict[str, RunStatus] = field(default_factory=dict)
    script: Optional[str] = None  # print-only: the rendered sbatch script
    tune: Optional[Plan] = None  # the tune phase's sweep, for a study that has one
    spec: Optional[StudySpec] = None  # the study as its runs were planned (with the tuned LR)

    @property
    def complete(self) -> bool:
        return bool(self.states) and all(s is RunStatus.COMPLETED for s in self.states.values())


class StudyLocked(ScalingError):
    pass


@contextmanager
def study_lock(study_dir: str) -> Iterator[None]:
    """An exclusive lock on the study folder while runs are chosen and launched."""
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    path = Path(study_dir) / ".launch.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise StudyLocked(
                f"{study_dir} is being launched by {holder}; wait for it to finish (scaling-status {study_dir}) "
                f"or stop it, then relaunch"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def launch_study(
    spec: StudySpec,
    launcher: LauncherConfig,
    cluster: Optional[ClusterConfig] = None,
    echo: Callable[[str], None] = print,
) -> LaunchOutcome:
    """Plan `spec` and launch the runs that need it. Local launches block until the runs end;
    Slurm launches return once submitted (unless launcher.wait).

    A study with a tune phase (`study.tune`) first launches its LR sweep (STUDY/tune/); once the
    sweep has ended, its best LR becomes every run's LR (muP, relative to the sweep's shape) and
    the study's own runs are planned and launched. A Slurm launch that does not wait submits the
    sweep and returns; the relaunch after it launches the study."""
    from scaling.launch.config import validate

    cluster = cluster or ClusterConfig()
    validate(StudyAppConfig(study=spec, launcher=launcher, cluster=cluster))
    study_dir = os.path.abspath(spec.dir)
    if launcher.name == "local" and launcher.warm_workers and not spec.dry_run:
        from scaling.launch.local import prestart_workers

        prestart_workers(launcher.parallel)  # they import torch while the study is planned
    if spec.extend == "next":
        spec = extended(spec, study_dir)
    configured = cluster.throughput_flops if launcher.name == "slurm" else None
    throughput = throughput_for(spec, study_dir, configured)
    outcome = LaunchOutcome(plan=None)  # type: ignore[arg-type] - set below
    main_spec = spec
    if spec.tune.enabled:
        from scaling.launch.tune import lr_rule_text, plan_tune, study_lr, tune_result, tuned_spec, write_tune

        tune = plan_tune(spec, study_dir)
        set_estimates(tune, *throughput)
        outcome.tune = tune
        result = tune_result(tune)
        if result is None and not spec.dry_run:
            check_budget(plan_cost(tune, spec.cost), spec.cost)
            _launch_plan(tune, spec, launcher, cluster, echo, outcome, heading="tune phase")
            if launcher.name == "slurm" and not launcher.wait:
                outcome.plan = tune
                return outcome
            result = tune_result(tune)
            if result is None:  # a sweep run failed; the launch said which
                outcome.plan = tune
                return outcome
        shape = tune.runs[0].shape
        if result is not None:
            if not spec.dry_run:
                write_tune(study_dir, tune, result, shape)
            echo(f"tune phase: best LR {result.best_lr:.4g} ({result.note}) from {len(tune.runs)} runs at the base "
                 f"shape {shape}; every run of the study gets it, scaled per layer by muP")  # fmt: skip
        main_spec = tuned_spec(spec, shape, study_lr(spec, result))
    plan = make_plan(main_spec, study_dir, throughput=throughput)
    outcome.spec = main_spec
    if spec.tune.enabled:
        plan.rules["lr"] = (lr_rule_text(outcome.tune.runs[0].shape, main_spec.rules.lr.coef) if result is not None
                            else "set by the tune phase, which has not run: the LRs and run ids below are "
                                 "provisional, at the grid's middle LR")  # fmt: skip
    outcome.plan = plan
    cost = plan_cost(plan, spec.cost)
    if launcher.name == "slurm":
        from scaling.launch.slurm import check_cluster

        check_cluster(plan, cluster)  # before anything is written or submitted
    if spec.dry_run:
        if outcome.tune is not None:
            echo("tune phase:\n" + format_plan(outcome.tune) + "\n")
        echo(format_plan(plan))
        echo(format_cost(cost, spec.cost))
        outcome.dry_run = True
        return outcome
    check_budget(cost, spec.cost)  # a dry run shows a plan over budget; a launch refuses it
    if launcher.name == "slurm" and launcher.print_script:
        from scaling.launch.slurm import render_sbatch

        run = plan.by_id().get(launcher.print_run) if launcher.print_run else plan.runs[0]
        if run is None:
            raise ConfigError(f"launcher.print_run={launcher.print_run!r} is not a run of the plan; pick an id from study.dry_run=true")
        outcome.script = render_sbatch(run, cluster)
        echo(outcome.script)
        return outcome
    _launch_plan(plan, spec, launcher, cluster, echo, outcome)
    return outcome


def extended(spec: StudySpec, study_dir: str) -> StudySpec:
    """The study with the sizes of its report's next_plan.yaml added to study.sizes.extra."""
    import yaml
    from dataclasses import replace

    from scaling.analysis.study import NEXT_PLAN

    path = os.path.join(study_dir, NEXT_PLAN)
    try:
        doc = yaml.safe_load(open(path).read()) or {}
    except FileNotFoundError:
        raise ConfigError(
            f"study.extend=next reads {path}, which does not exist: the report writes it only when an IsoFLOP "
            f"minimum lies on the edge of its sizes; drop study.extend"
        ) from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"study.extend=next: cannot read {path} ({e}); delete it and refit the study") from None
    extra = (doc.get("sizes") or {}).get("extra") or []
    spec = replace(spec, sizes=replace(spec.sizes, extra=[*spec.sizes.extra, *extra]))
    from scaling.errors import raise_if

    raise_if(spec.problems())
    return spec


def _launch_plan(
    plan: Plan,
    spec: StudySpec,
    launcher: LauncherConfig,
    cluster: ClusterConfig,
    echo: Callable[[str], None],
    outcome: LaunchOutcome,
    heading: Optional[str] = None,
) -> None:
    """Write `plan` and launch its runs that need it (skipping completed, queued and failed ones),
    under the study's lock; record what happened in `outcome`."""
    study_dir = os.path.abspath(spec.dir)
    with study_lock(study_dir):
        write_plan(plan)
        runs = {r.id: r for r in plan.runs}
        states = read_states({r.id: r.dir for r in plan.runs})
        todo, resumed = [], []
        skipped, active, failed = [], [], {}
        for rid, st in states.items():
            if st.state is RunStatus.COMPLETED:
                skipped.append(rid)
            elif st.state in ACTIVE:
                active.append(rid)
            elif st.state is RunStatus.FAILED:
                if spec.retry_failed:
                    archive_failed(runs[rid].dir)
                    todo.append(runs[rid])
                    resumed.append(rid)
                else:
                    failed[rid] = st.error or "failed"
            else:
                todo.append(runs[rid])
                if st.state is RunStatus.PARTIAL:
                    resumed.append(rid)
        for note in plan.notes:  # a dry run prints them with the plan; a launch prints them here
            echo(f"note: {note}")
        what = f"{heading} of study {spec.name}" if heading else f"study {plan.study}"
        echo(
            f"{what} in {study_dir}: {len(plan.runs)} runs; {len(skipped)} completed, "
            f"{len(active)} queued or running, {len(failed)} failed, "
            f"launching {len(todo)} ({len(resumed)} resume or retry)"
        )
        for rid, error in failed.items():
            echo(f"  failed: {rid}: {error.strip().splitlines()[-1] if error.strip() else error}")
        if failed:
            echo("  (relaunch with study.retry_failed=true to retry the failed runs)")
        outcome.skipped_completed += skipped
        outcome.skipped_active += active
        outcome.failed.update(failed)
        outcome.launched += [r.id for r in todo]

        if launcher.name == "local":
            from scaling.launch.local import run_local

            outcome.exit_codes.update(run_local(todo, launcher.parallel, echo=echo, warm=launcher.warm_workers,
                                                stall_timeout_s=launcher.stall_timeout_s))  # fmt: skip
        else:
            from scaling.launch.slurm import submit_runs

            outcome.job_ids.update(submit_runs(plan, todo, cluster, launcher, echo=echo))

    if launcher.name == "slurm" and launcher.wait and (todo or active):
        from scaling.launch.status import follow

        follow(plan.dir, poll_s=launcher.poll_s, echo=echo)
    outcome.states.update({rid: st.state for rid, st in read_states({r.id: r.dir for r in plan.runs}).items()})


def summarize(outcome: LaunchOutcome) -> str:
    counts: dict[str, int] = {}
    for s in outcome.states.values():
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def _main(dcfg) -> int:
    from omegaconf.errors import OmegaConfBaseException

    from scaling.launch.config import to_dataclass

    try:
        cfg = to_dataclass(dcfg)
    except OmegaConfBaseException as e:  # e.g. a mandatory value (???) left unset
        raise ConfigError(str(e).strip().splitlines()[0]) from None
    outcome = launch_study(cfg.study, cfg.launcher, cfg.cluster)
    if outcome.dry_run or outcome.script is not None:
        return 0
    print(f"study {outcome.plan.study}: {summarize(outcome)}")
    if outcome.plan.kind == "tune":  # the sweep has not ended well: nothing of the study to fit yet
        if cfg.launcher.name == "slurm" and not cfg.launcher.wait and not outcome.failed:
            print(f"tune phase submitted; follow it with: scaling-status {outcome.plan.dir}; relaunch when done "
                  f"to launch the study at its best LR")  # fmt: skip
            return 0
        return 1
    if cfg.launcher.name == "slurm" and not cfg.launcher.wait and (outcome.launched or outcome.skipped_active):
        # Launching does not block; relaunching once the jobs have ended fits and reports.
        print(f"follow it with: scaling-status {outcome.plan.dir}; relaunch when done to fit and report")
        return 0
    if cfg.report.enabled:
        try:
            analysis = report_study(outcome.plan.dir, cfg.report)
        except ScalingError as e:
            if outcome.complete:
                raise
            # Failed runs decide the exit code (1); that the rest cannot be fitted is a consequence.
            print(f"scaling-study: {e}", file=sys.stderr)
            return 1
        if outcome.complete and cfg.study.verify.enabled:
            return verify_study(outcome, analysis, cfg)
    elif cfg.study.verify.enabled:
        print("note: study.verify needs the study's fit (report.enabled=false skips it); no verification run")
    return 0 if outcome.complete else 1


def verify_study(outcome: LaunchOutcome, analysis, cfg, echo: Callable[[str], None] = print) -> int:
    """Plan the verification run from the fitted study, write its prediction (once), then train it
    and report predicted against actual. Returns the exit code."""
    from scaling.analysis.study import write_study_outputs
    from scaling.analysis.verify import verification
    from scaling.launch.verify import plan_verify, predict_verify

    study_dir = outcome.plan.dir
    plan = plan_verify(outcome.spec, study_dir, analysis, outcome.plan)
    doc, written = predict_verify(outcome.spec, analysis, outcome.plan, plan)
    run = plan.runs[0]
    if doc.get("run", {}).get("id") not in (None, run.id):
        echo(f"note: the prediction in force names run {doc['run']['id']}, but the study now plans {run.id}; "
             f"training the planned run, which the report does not judge against that prediction")  # fmt: skip
    p = (doc.get("predictions") or {}).get("parametric", {})
    if p:
        lo, hi = p["prediction_interval"]
        echo(f"{'predicted' if written else 'prediction (kept from before)'}: run {run.id} (N={run.N:.3g}, D={run.D:.3g}, "
             f"C={run.C:.3g}) will reach loss {p['loss']:.4f} [{lo:.4f}, {hi:.4f}] (approach 3; "
             f"verify/prediction.json)")  # fmt: skip
    sub = LaunchOutcome(plan=plan)
    _launch_plan(plan, outcome.spec, cfg.launcher, cfg.cluster, echo, sub, heading="verification run")
    if cfg.launcher.name == "slurm" and not cfg.launcher.wait and not sub.complete:
        echo(f"verification run submitted; relaunch once it has ended to report predicted against actual")
        return 0
    analysis.verification = verification(study_dir)
    paths = write_study_outputs(study_dir, analysis)
    for line in verification_lines(analysis.verification):
        echo(f"  {line}")
    echo(f"report: {paths['report.md']}")
    return 0 if sub.complete else 1


def verification_lines(v: Optional[dict]) -> list[str]:
    from scaling.analysis.study import verification_sentences

    return verification_sentences(v) if v else []


def report_study(study_dir: str, cfg: ReportConfig, echo: Callable[[str], None] = print):
    """Fit the study's completed runs and write report.md, fit.json and figures/; print a short
    summary and where the report is. Refits from the run directories every time. Returns the
    StudyAnalysis."""
    import time

    from scaling.analysis.errors import AnalysisError
    from scaling.analysis.study import analyse_study, headline, write_study_outputs

    t0 = time.time()
    echo(f"fitting {study_dir} ...")
    try:
        window = {} if cfg.isoflop_window is None else {"isoflop_window": cfg.isoflop_window or None}
        analysis = analyse_study(study_dir, n_boot=cfg.bootstrap, holdout=cfg.holdout_largest,
                                 tolerance=cfg.tolerance, fix=cfg.fix, tie=cfg.tie, bounds=cfg.bound,
                                 **window)
    except AnalysisError as e:
        raise ScalingError(f"cannot fit the study: {e}") from None
    paths = write_study_outputs(study_dir, analysis)
    for line in headline(analysis):
        echo(f"  {line}")
    for problem in analysis.problems:
        echo(f"  note: {problem}")
    echo(f"report: {paths['report.md']} (fitted in {time.time() - t0:.1f}s)")
    return analysis


def _error_line(e: ConfigError) -> str:
    """One line for one problem; the project's list for several."""
    return f"invalid config: {e.problems[0]}" if len(e.problems) == 1 else str(e)


def _hydra_error_line(e: BaseException) -> str:
    """Hydra's composition error in one line: its first line, its cause's (OmegaConf's finding,
    which names the key), and the fix."""
    from hydra.errors import MissingConfigException, OverrideParseException

    def first(x: BaseException) -> str:
        text = str(x).strip()
        return text.splitlines()[0].rstrip(".") if text else type(x).__name__

    if isinstance(e, OverrideParseException):
        return (f"invalid config: cannot parse the override {e.override!r} ({first(e)}); quote a value that holds "
                f"'=', brackets or spaces, e.g. 'study.overrides=[\"data.path=DIR\"]'")  # fmt: skip
    line = first(e) + (f": {first(e.__cause__)}" if e.__cause__ is not None else "")
    if isinstance(e, MissingConfigException):
        return f"invalid config: {line}" + (f"; pick one of {', '.join(sorted(e.options))}" if e.options else "")
    return f"invalid config: {line}; `scaling-study --cfg job` prints every key with its value"


def main() -> None:
    """Console entry point (`scaling-study`): Hydra composes conf/study_app.yaml.

    Exit codes: 0 when every run completed (or a dry run, or a Slurm launch that returns once
    submitted), 1 when a run failed or the launch could not proceed, 2 for a config error, printed
    in one line without a traceback: Hydra's own (a misspelled key, a wrong type, an unknown
    config choice such as study=nope, an override that does not parse) and the planner's (a bad
    value, a budget too small for any model, data that cannot be read)."""
    import traceback

    import hydra

    from scaling.launch.config import register_configs
    from scaling.launch.plan import CONF_DIR

    register_configs()
    state = {"started": False, "code": 0}
    user_full_error = os.environ.get("HYDRA_FULL_ERROR")

    def restore_full_error() -> None:
        if user_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_full_error

    # An absolute path: a relative one would be resolved against the package when run as a
    # console script.
    @hydra.main(config_path=str(CONF_DIR), config_name="study_app", version_base="1.3")
    def app(dcfg) -> None:
        state["started"] = True
        restore_full_error()  # from here on Hydra reports errors as before, and the runs inherit no change
        try:
            state["code"] = _main(dcfg)
        except ConfigError as e:
            print(f"scaling-study: {_error_line(e)}", file=sys.stderr)
            state["code"] = 2
        except ScalingError as e:
            print(f"scaling-study: {e}", file=sys.stderr)
            state["code"] = 1

    # Hydra prints a composition error over several lines and exits 1, indistinguishable from a
    # failed run. Asked for full errors, it raises them instead: an error raised before the task
    # started is a config error.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except Exception as e:
        if state["started"]:
            raise
        if user_full_error == "1":
            traceback.print_exc()
        print(f"scaling-study: {_hydra_error_line(e)}", file=sys.stderr)
        sys.exit(2)
    finally:
        restore_full_error()
    sys.exit(state["code"])


if __name__ == "__main__":
    main()
