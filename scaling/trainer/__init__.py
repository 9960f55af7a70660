"""The trainer behind `scaling-train` (scaling/train.py, the entry point), one concern per module:

    plan.py         what a run will do, from its config and data alone: counts, steps, batch
                    arithmetic, and the micro batch (decided there and nowhere else)
    engine.py       the model under its engine (`train.engine`): optimizer, LR schedule, one optimizer
                    step, evaluation; DeepSpeed here, and the engine registry
    fsdp2.py        the FSDP2 engine (PyTorch's fully_shard)
    checkpointing.py  saving and resuming a run's checkpoints, atomically, with the run's identity
                    (the final step's included: scaling-export reads it)
    loop.py         the Trainer: the training loop, which calls its callbacks at each seam
    callbacks/      what the loop calls: the metrics file, the progress log, the checkpoint cadence,
                    the wandb mirror (scaling/wandb_mirror.py), and callbacks a user names in
                    `train.callbacks`
    directory.py    taking a run directory: its lease, an earlier attempt's result, and the check
                    that a rerun or a resume is the same run
    process.py      the process around a run: device, threads, the process group and its teardown

Only the loop and the callbacks change when the trainer learns something new; the entry point
wires them together.
"""
