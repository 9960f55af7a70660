#!/usr/bin/env bash
# The check to run on a GPU machine: a GPT of about 350M parameters (24 layers, d_model 1024,
# 16 heads, vocabulary padded to 50304, 2048-token context) trained in bf16 with ZeRO-1 for
# about 50 steps through scaling-train, beside a plain PyTorch loop on the same model.
# Prints tokens/s and MFU (against the detected GPU's dense bf16 peak) for both. Goal: >= 50% MFU
# on an H100.
#
# Then the GPU defaults that a CPU never exercises, EXTRA_STEPS steps each on the same model and
# global batch: train.micro_batch_size=auto (the micro batch it picks is printed) and
# train.activation_checkpointing=true (its MFU counts the model's FLOPs, not the recomputation).
#
#   bash bench/gpu_check.sh [STEPS] [MICRO_BATCH]
#
# Environment: PY (the Python to use), OUT (a folder for the runs; default a temporary one),
# EXTRA_STEPS (steps of each extra run, default 30; 0 skips them), RUN_TIMEOUT (seconds any one
# part may take before it is stopped, default 1800), ONLY (a space-separated subset of
# "train plain auto ckpt"). For a quick try of the script itself on a small machine: LAYERS,
# D_MODEL, HEADS, SEQ, DEVICE (cuda or cpu; on cpu there is no MFU).
# Every part runs even when an earlier one fails; the exit status is 1 if any failed.
#
# Measured on one H200 (torch 2.11, DeepSpeed 0.19.8, commit 445a626; MFU against 989 TFLOP/s with
# the 6n convention, attention included): scaling-train 139.8k tokens/s, MFU 43.1%; plain loop
# 145.5k tokens/s, 44.9%; micro_batch_size=auto picked 16 (x 2 accumulation): 148.7k, 45.8%;
# activation checkpointing (micro 8): 116.4k, 35.9%.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${1:-50}
MICRO=${2:-8}
OUT=${OUT:-$(mktemp -d)}
EXTRA_STEPS=${EXTRA_STEPS:-30}
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}
ONLY=${ONLY:-train plain auto ckpt}
LAYERS=${LAYERS:-24}
D_MODEL=${D_MODEL:-1024}
HEADS=${HEADS:-16}
SEQ=${SEQ:-2048}
DEVICE=${DEVICE:-cuda}
GLOBAL=$((MICRO * 4))
SHAPE="model=gpt model.n_layers=$LAYERS model.d_model=$D_MODEL model.n_heads=$HEADS model.vocab_size=50304"
DATA="data=stdlib_text data.seq_len=$SEQ data.max_source_mb=64"
export PYTHONUNBUFFERED=1
FAILED=""

wants() { [[ " $ONLY " == *" $1 "* ]]; }

# train NAME STEPS [OVERRIDES...]: one scaling-train run in $OUT/NAME, then its summary.
train() {
  local name=$1 steps=$2
  shift 2
  rm -rf "${OUT:?}/$name"
  timeout -k 20 "$RUN_TIMEOUT" $PY -m scaling.train run.dir="$OUT/$name" $SHAPE $DATA train.precision=bf16 \
    train.zero_stage=1 train.device="$DEVICE" train.tokens=$((steps * GLOBAL * SEQ)) \
    train.global_batch_size=$GLOBAL train.eval_tokens=65536 logger.wandb.mode=disabled "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "$name: FAILED (exit status $rc; 124: stopped after RUN_TIMEOUT)"
    FAILED="$FAILED $name"
    return
  fi
  $PY - "$OUT/$name" "$name" <<'PYEOF'
import json, re, statistics, sys
run, name = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(run + "/metrics.jsonl")]
steady = rows[len(rows) // 5 :]  # skip warm-up steps
tps = statistics.median(r["tokens_per_s"] for r in steady)
mfu = [r["mfu"] for r in steady if "mfu" in r]
res = json.load(open(run + "/result.json"))
log = open(run + "/train.log").read()
m = re.search(r"micro batch (\d+) x (\d+) accumulation", log)
picked = re.search(r"micro batch auto: (\d+)", log)
print(f"{name}: {res['params']:,} params, {tps:,.0f} tokens/s, "
      + (f"MFU {100 * statistics.median(mfu):.1f}%" if mfu else "MFU unknown (GPU peak not in the table)")
      + (f", micro batch {m[1]} x {m[2]} accumulation" if m else "")
      + (" (picked by auto)" if picked else "")
      + f", {len(rows)} steps, final loss {res['train_loss']:.3f}")
PYEOF
}

if wants train; then
  echo "== scaling-train: bf16, ZeRO-1, global batch $GLOBAL x $SEQ tokens, $STEPS steps"
  train train "$STEPS" train.micro_batch_size="$MICRO"
fi

if wants plain; then
  echo "== plain PyTorch loop: same model, bf16 autocast, fused AdamW"
  timeout -k 20 "$RUN_TIMEOUT" $PY - "$STEPS" "$MICRO" "$LAYERS" "$D_MODEL" "$HEADS" "$SEQ" "$DEVICE" <<'PYEOF'
import sys, time, torch
from scaling.config import GPTConfig
from scaling.counting import flops_per_token
from scaling.hardware import peak_flops
from scaling.models import build_model
steps, micro, layers, d_model, heads, seq = map(int, sys.argv[1:7])
dev = sys.argv[7]
cuda = dev == "cuda"
cfg = GPTConfig(n_layers=layers, d_model=d_model, n_heads=heads, seq_len=seq, vocab_size=50304)
model = build_model(cfg).to(dev)
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=cuda)
x = torch.randint(0, 257, (micro, seq + 1), device=dev)
def sync():
    if cuda:
        torch.cuda.synchronize()
def step():
    for _ in range(4):
        with torch.autocast(dev, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1).float(), x[:, 1:].flatten())
        (loss / 4).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(min(5, steps)): step()
sync(); t0 = time.time()
for _ in range(steps): step()
sync()
tps = steps * 4 * micro * seq / (time.time() - t0)
name = torch.cuda.get_device_name() if cuda else "cpu"
peak = peak_flops(name) if cuda else None
mfu = tps * flops_per_token(cfg, "6n") / peak if peak else None
print(f"plain loop: {tps:,.0f} tokens/s, " + (f"MFU {100 * mfu:.1f}%" if mfu else "MFU unknown"), f"on {name}")
PYEOF
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "plain: FAILED (exit status $rc)"
    FAILED="$FAILED plain"
  fi
fi

if [ "$EXTRA_STEPS" -gt 0 ]; then
  if wants auto; then
    echo "== scaling-train, train.micro_batch_size=auto: $EXTRA_STEPS steps"
    train auto "$EXTRA_STEPS" train.micro_batch_size=auto
  fi
  if wants ckpt; then
    echo "== scaling-train, train.activation_checkpointing=true, micro batch $MICRO: $EXTRA_STEPS steps"
    train ckpt "$EXTRA_STEPS" train.micro_batch_size="$MICRO" train.activation_checkpointing=true
  fi
fi

echo "== runs in $OUT"
if [ -n "$FAILED" ]; then
  echo "failed:$FAILED"
  exit 1
fi
