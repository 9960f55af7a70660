#!/usr/bin/env bash
# The check to run on a GPU machine: a GPT of about 350M parameters (24 layers, d_model 1024,
# 16 heads, vocabulary padded to 50304, 2048-token context) trained in bf16 with ZeRO-1 for
# about 50 steps through scaling-train, beside a plain PyTorch loop on the same model.
# Prints tokens/s and MFU (against the detected GPU's dense bf16 peak) for both. Goal: >= 50% MFU
# on an H100.
#
#   bash bench/gpu_check.sh [STEPS] [MICRO_BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${1:-50}
MICRO=${2:-8}
OUT=${OUT:-$(mktemp -d)}
GLOBAL=$((MICRO * 4))
TOKENS=$((STEPS * GLOBAL * 2048))
SHAPE="model=gpt model.n_layers=24 model.d_model=1024 model.n_heads=16 model.vocab_size=50304"
DATA="data=stdlib_text data.seq_len=2048 data.max_source_mb=64"

echo "== scaling-train: bf16, ZeRO-1, global batch $GLOBAL x 2048 tokens, $STEPS steps"
$PY -m scaling.train run.dir="$OUT/run" $SHAPE $DATA train.precision=bf16 train.zero_stage=1 \
  train.tokens=$TOKENS train.global_batch_size=$GLOBAL train.micro_batch_size=$MICRO \
  train.eval_tokens=65536 logger.wandb.mode=disabled
$PY - "$OUT/run" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
steady = rows[len(rows) // 5 :]  # skip warm-up steps
tps = statistics.median(r["tokens_per_s"] for r in steady)
mfu = [r["mfu"] for r in steady if "mfu" in r]
res = json.load(open(sys.argv[1] + "/result.json"))
print(f"scaling-train: {res['params']:,} params, {tps:,.0f} tokens/s, "
      + (f"MFU {100 * statistics.median(mfu):.1f}%" if mfu else "MFU unknown (GPU peak not in the table)"))
PYEOF

echo "== plain PyTorch loop: same model, bf16 autocast, fused AdamW"
$PY - "$STEPS" "$MICRO" <<'PYEOF'
import sys, time, torch
from scaling.config import GPTConfig
from scaling.counting import flops_per_token
from scaling.hardware import peak_flops
from scaling.models import build_model
steps, micro = int(sys.argv[1]), int(sys.argv[2])
cfg = GPTConfig(n_layers=24, d_model=1024, n_heads=16, seq_len=2048, vocab_size=50304)
model = build_model(cfg).cuda()
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
x = torch.randint(0, 257, (micro, 2049), device="cuda")
def step():
    for _ in range(4):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1).float(), x[:, 1:].flatten())
        (loss / 4).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(5): step()
torch.cuda.synchronize(); t0 = time.time()
for _ in range(steps): step()
torch.cuda.synchronize()
tps = steps * 4 * micro * 2048 / (time.time() - t0)
peak = peak_flops(torch.cuda.get_device_name())
mfu = tps * flops_per_token(cfg, "6n") / peak if peak else None
print(f"plain loop: {tps:,.0f} tokens/s, " + (f"MFU {100 * mfu:.1f}%" if mfu else "MFU unknown"),
      f"on {torch.cuda.get_device_name()}")
PYEOF
