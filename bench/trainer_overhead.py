"""How much does the trainer cost over a hand-written PyTorch loop?

Trains the same GPT on the same batches for the same number of steps, in one process on CPU:
  1. through scaling-train's own step (DeepSpeed engine, ZeRO-0, fp32, gradient clipping, LR
     schedule, loss all-reduce), and
  2. through a plain loop: forward, cross entropy, backward, clip, AdamW.step, scheduler.step.
Prints tokens/s of each and the ratio (goal: >= 0.95).

    python bench/trainer_overhead.py [--steps 30] [--d-model 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="alternate the two loops this many times")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from scaling.config import DataConfig, GPTConfig, TrainAppConfig, TrainConfig, RunConfig, validate
    from scaling.data import prepare_dataset, train_batches
    from scaling.distributed import detect_world
    from scaling.models import build_model
    from scaling.schedule import lr_factor
    from scaling.train import Trainer, param_groups, plan_run

    torch.set_num_threads(os.cpu_count() or 1)
    tmp = tempfile.mkdtemp()
    cfg = validate(TrainAppConfig(
        model=GPTConfig(n_layers=args.layers, d_model=args.d_model, n_heads=max(1, args.d_model // 64)),
        data=DataConfig(name="synthetic", seq_len=128, cache_dir=os.path.join(tmp, "cache")),
        train=TrainConfig(tokens=1e9, global_batch_size=args.batch, zero_stage=0, seed=0),
        run=RunConfig(dir=os.path.join(tmp, "run")),
    ))  # fmt: skip
    world = detect_world()
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    manifest = prepare_dataset(cfg.data)
    plan = plan_run(cfg, manifest, world)
    stream = train_batches(manifest, global_batch_size=args.batch, rank=0, world_size=1, seed=0)
    batches = [next(stream) for _ in range(args.steps + args.warmup)]
    tokens_per_step = plan.tokens_per_step
    print(f"model: {plan.params:,} params, batch {args.batch} x {plan.samples_per_seq} tokens, "
          f"{torch.get_num_threads()} threads")

    trainer = Trainer(plan, manifest, world)

    def run_trainer() -> float:
        for x, y in batches[: args.warmup]:
            trainer.train_step(x, y)
        t0 = time.perf_counter()
        for x, y in batches[args.warmup :]:
            trainer.train_step(x, y)
        return args.steps * tokens_per_step / (time.perf_counter() - t0)

    torch.manual_seed(0)
    model = build_model(plan.cfg.model)
    t = plan.cfg.train
    opt = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2), foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, plan.steps, schedule=t.schedule))

    def run_plain() -> float:
        def step(x, y):
            logits = model(x)
            loss = F.cross_entropy(logits.flatten(0, -2), y.flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()

        for x, y in batches[: args.warmup]:
            step(x, y)
        t0 = time.perf_counter()
        for x, y in batches[args.warmup :]:
            step(x, y)
        return args.steps * tokens_per_step / (time.perf_counter() - t0)

    ours, plain = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both alike
        ours.append(run_trainer())
        plain.append(run_plain())
    a, b = statistics.median(ours), statistics.median(plain)
    print(f"scaling-train step: {a:,.0f} tokens/s (runs: {', '.join(f'{v:,.0f}' for v in ours)})")
    print(f"plain PyTorch loop: {b:,.0f} tokens/s (runs: {', '.join(f'{v:,.0f}' for v in plain)})")
    print(f"ratio: {a / b:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
