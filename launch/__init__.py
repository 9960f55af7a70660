"""Launching studies: plan size ladders and IsoFLOP grids, run them locally or on Slurm.

    config   the typed study spec, launcher and cluster configs (Hydra schemas)
    plan     the planner: a spec in, printable run specs with deterministic ids out
    state    each run's state from its run directory and the Slurm queue
    local    the local launcher (processes, torchrun)
    slurm    the Slurm launcher (submitit; requeue on preemption and time limits)
    study    `scaling-study`, and `launch_study` as a function
    status   `scaling-status`

Nothing here imports torch or DeepSpeed: it runs on login nodes and laptops.
"""

if __name__ != "scaling.launch":
    # Run from the repository root, `import launch` would find this folder as a second, top-level
    # copy of the package, with its own module state. Only the installed name is allowed.
    raise ImportError(f"{__name__!r} is the launch/ folder imported by its path; it is installed as "
                      "scaling.launch: import scaling.launch (pip install -e . if it is missing)")

