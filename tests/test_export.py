"""scaling-export: runs trained for real, exported, and loaded back with Hugging Face Transformers
(GPT as GPT-2) or with our own loader (any family), then compared logit for logit."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from scaling.checkpoint import torch_load
from scaling.config import GPTConfig
from scaling.data import eval_batches, load_tokenizer, prepare_dataset
from scaling.export import (
    ExportError, export, gpt_to_hf, hf_tokenizer, load_exported, main, read_model_state, run_config, tokenizer_files,
)  # fmt: skip
from scaling.models import build_model
from scaling.rundir import checkpoint_dirs, read_metrics, read_result
from trainer_utils import ROOT, env, run_train

transformers = pytest.importorskip("transformers")


def run_overrides(overrides: list[str], cache: Path | None = None) -> int:
    """scaling-train in a subprocess: an in-process run would leave its process group (and the
    MASTER_PORT it set) in this test process, where every later trainer subprocess inherits the
    port and finds it taken."""
    environment = env(cache) if cache is not None else {k: v for k, v in env(ROOT).items() if k != "SCALING_CACHE"}
    proc = subprocess.run([sys.executable, "-m", "scaling.train", *overrides], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    return proc.returncode

# Two steps of 1024 tokens with a checkpoint and an evaluation after the first, so these runs
# export step 1 (recorded eval loss) as well as their final step (tests/test_final_checkpoint.py).
TINY = [
    "model=gpt_debug", "data=synthetic", "model.n_layers=2", "model.d_model=32", "model.n_heads=2",
    "train.global_batch_size=16", "train.tokens=2048", "train.checkpoint_every_tokens=1024",
    "train.eval_every_tokens=1024", "train.eval_tokens=2048", "train.device=cpu", "logger.wandb.mode=disabled",
]  # fmt: skip
STEP = 1


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export-cache")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> dict[str, Path]:
    """Tiny runs trained in this process: untied at ZeRO-0, tied at ZeRO-3, bf16 at ZeRO-0."""
    root = tmp_path_factory.mktemp("export-runs")
    out = {}
    for name, extra in (
        ("untied", []),
        ("tied_zero3", ["model.tie_embeddings=true", "train.zero_stage=3"]),
        ("bf16", ["train.precision=bf16"]),
    ):
        out[name] = root / name
        assert run_overrides([f"run.dir={out[name]}", f"data.cache_dir={cache}", *TINY, *extra], cache) == 0, name
    return out


def our_model(run: Path) -> torch.nn.Module:
    """The run's model as our own code builds it, with the checkpoint's weights."""
    cfg = run_config(run)
    with torch.device("meta"):
        skeleton = build_model(cfg.model)
    state, _ = read_model_state(checkpoint_dirs(run)[0], skeleton)
    model = build_model(cfg.model)
    model.load_state_dict(state, strict=True)
    return model.eval()


def fixed_batch(vocab: int, seq_len: int) -> torch.Tensor:
    return torch.randint(0, vocab, (4, seq_len), generator=torch.Generator().manual_seed(0))


def recorded_eval_loss(run: Path, step: int) -> float:
    return next(r["eval_loss"] for r in read_metrics(run / "metrics.jsonl") if r["step"] == step and "eval_loss" in r)


def eval_loss(forward, run: Path, eval_tokens: int = 2048) -> float:
    """The trainer's evaluation (summed cross-entropy over its fixed validation samples), redone."""
    manifest = prepare_dataset(run_config(run).data)
    n = min(math.ceil(eval_tokens / manifest.seq_len), manifest.num_samples("val"))
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in eval_batches(manifest, num_samples=n, batch_size=16, rank=0, world_size=1):
            logits = forward(x)
            total += torch.nn.functional.cross_entropy(logits.flatten(0, -2).float(), y.flatten(), reduction="sum").item()
            count += y.numel()
    return total / count


def load_hf(out: Path) -> torch.nn.Module:
    return transformers.GPT2LMHeadModel.from_pretrained(out).eval()


def test_gpt_loads_in_transformers_with_our_logits(runs, tmp_path):
    run = runs["untied"]
    out = tmp_path / "hf"
    assert main([str(run), "--format", "hf", "--out", str(out), "--step", str(STEP)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "scaling_export.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["activation_function"] == "gelu" and config["tie_word_embeddings"] is False
    assert config["n_inner"] == 4 * 32 and config["n_positions"] == 64 and config["vocab_size"] == 65
    assert config["eos_token_id"] == 64  # the synthetic language's end-of-document token

    hf = load_hf(out)
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    x = fixed_batch(65, 64)
    with torch.no_grad():
        ours, theirs = our_model(run)(x), hf(x).logits
    assert theirs.dtype == torch.float32
    assert (ours - theirs).abs().max().item() < 1e-5
    # The exported weights are the ones the trainer evaluated at that step.
    assert eval_loss(lambda x: hf(x).logits, run) == pytest.approx(recorded_eval_loss(run, STEP), abs=1e-5)

    provenance = json.loads((out / "scaling_export.json").read_text())
    assert provenance["step"] == STEP and provenance["final_step"] == 2 and provenance["run_id"] == "untied"
    assert provenance["config_hash"] == read_result(run)["config_hash"]
    assert "no text form" in provenance["tokenizer"]


def test_tied_embeddings_and_zero3(runs, tmp_path):
    run = runs["tied_zero3"]
    out = export(run, tmp_path / "hf", step=STEP)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    from safetensors.torch import load_file

    assert "lm_head.weight" not in load_file(out / "model.safetensors")  # one matrix, tied on load
    hf = load_hf(out)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    x = fixed_batch(65, 64)
    with torch.no_grad():
        assert (our_model(run)(x) - hf(x).logits).abs().max().item() < 1e-5
    # ZeRO-3 partitions the weights: the gathered ones give the loss the trainer measured.
    assert eval_loss(lambda x: hf(x).logits, run) == pytest.approx(recorded_eval_loss(run, STEP), abs=1e-5)
    assert "ZeRO-3" in json.loads((out / "scaling_export.json").read_text())["weights"]


def test_bf16_run_exports_its_fp32_master_weights(runs, tmp_path):
    run = runs["bf16"]
    out = export(run, tmp_path / "hf", step=STEP)
    from safetensors.torch import load_file

    exported = load_file(out / "model.safetensors")
    held = torch_load(checkpoint_dirs(run)[0] / "state" / "mp_rank_00_model_states.pt")["module"]
    qkv = exported["transformer.h.0.attn.c_attn.weight"]
    assert qkv.dtype == torch.float32 and held["blocks.0.attn.qkv.weight"].dtype == torch.bfloat16
    assert torch.equal(qkv.t().to(torch.bfloat16), held["blocks.0.attn.qkv.weight"])  # the module rounds them
    assert not torch.equal(qkv, qkv.to(torch.bfloat16).float())  # and they are finer than bf16
    x = fixed_batch(65, 64)
    with torch.no_grad():
        assert (our_model(run)(x) - load_hf(out)(x).logits).abs().max().item() < 1e-5


def test_default_export_needs_the_final_step(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["untied"], run)
    final = read_result(run)["steps"]
    for folder in checkpoint_dirs(run):  # a run directory from before the trainer saved its final step
        if int(folder.name[4:]) == final:
            shutil.rmtree(folder)
    with pytest.raises(ExportError, match=rf"completed at step {final}, but no checkpoint holds its final weights "
                                          rf"\(checkpoints at steps: {STEP}\); export an earlier one with --step N"):
        export(run, tmp_path / "out")
    with pytest.raises(ExportError, match=rf"no checkpoint at step 7; its checkpoints are at steps: {STEP}"):
        export(run, tmp_path / "out", step=7)
    assert not (tmp_path / "out").exists()


def test_bad_input_is_refused_with_the_fix(runs, cache, tmp_path, capsys):
    good = runs["untied"]
    with pytest.raises(ExportError, match=r"--format 'onnx' is not a known export format; use one of hf, safetensors"):
        export(good, tmp_path / "out", fmt="onnx", step=STEP)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ExportError, match="exists and is not an empty folder; pick a new --out"):
        export(good, tmp_path / "full", step=STEP)
    with pytest.raises(ExportError, match="is not a run directory"):
        export(tmp_path / "nowhere", tmp_path / "out")

    unfinished = tmp_path / "unfinished"
    shutil.copytree(good, unfinished)
    (unfinished / "result.json").unlink()
    with pytest.raises(ExportError, match="has no result.json: the run is unfinished"):
        export(unfinished, tmp_path / "out", step=STEP)

    failed = tmp_path / "failed"  # a budget smaller than one step: the trainer records a failure
    assert run_overrides([f"run.dir={failed}", f"data.cache_dir={cache}", *TINY, "train.tokens=10"], cache) == 2
    assert read_result(failed)["status"] == "failed"
    with pytest.raises(ExportError, match=r"(?s)holds a failed run \(.*smaller than one step.*\); fix the cause"):
        export(failed, tmp_path / "out")

    # The console script prints the error without a traceback and exits 2.
    capsys.readouterr()
    assert main([str(failed), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("scaling-export: ")
    assert not (tmp_path / "out").exists()


def test_console_script_rejects_an_unknown_format(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scaling.export", str(tmp_path), "--format", "gguf", "--out",
                           str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert "scaling-export: --format 'gguf' is not a known export format; use one of hf, safetensors" in proc.stderr


# ---- what GPT-2 cannot express is refused, naming the difference --------------------------------
def _gpt(**kw) -> tuple[GPTConfig, torch.nn.Module]:
    cfg = GPTConfig(n_layers=1, d_model=16, n_heads=2, seq_len=8, vocab_size=11, **kw)
    return cfg, build_model(cfg)


def test_gpt2_mapping_is_exact_where_activations_are_large(tmp_path):
    # Trained tiny models barely leave GELU's linear range, where the exact GELU and GPT-2's tanh
    # approximation agree to 1e-6; weights of unit scale tell the two (and any misplaced transpose)
    # apart.
    cfg, model = _gpt()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    tensors, config = gpt_to_hf(model.state_dict(), cfg, model)
    from safetensors.torch import save_file

    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf = load_hf(tmp_path)
    x = fixed_batch(11, 8)
    with torch.no_grad():
        ours, theirs = model.eval()(x), hf(x).logits
        hf.config.activation_function = "gelu_new"
        for block in hf.transformer.h:
            block.mlp.act = transformers.activations.ACT2FN["gelu_new"]
        approximated = hf(x).logits
    assert (ours - theirs).abs().max().item() < 1e-5
    assert (ours - approximated).abs().max().item() > 1e-4  # the check can tell GELUs apart


def test_mup_multipliers_are_folded_into_the_weights(tmp_path):
    # Away from the base shape every muP multiplier is active: logits x 1/4, residual branches
    # x 1/2, attention logits sqrt(4)/8 instead of 1/sqrt(8). GPT-2 has none of them; folded into
    # the weights, it computes our logits.
    from scaling.export import fold_multipliers
    from scaling.families.base import MupConfig

    cfg, model = _gpt(parametrization="mup", mup=MupConfig(base_width=4, base_depth=1, base_head_dim=4))
    cfg = GPTConfig(**{**cfg.__dict__, "n_layers": 2})
    model = build_model(cfg)
    scales = model.mup
    assert (scales.output, scales.residual, model.blocks[0].attn.scale) == (0.25, 0.5, 0.25)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    tensors, config = gpt_to_hf(fold_multipliers(model.state_dict(), cfg), cfg, model)
    from safetensors.torch import save_file

    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    x = fixed_batch(11, 8)
    with torch.no_grad():
        ours, theirs = model.eval()(x), load_hf(tmp_path)(x).logits
        unfolded = gpt_to_hf(model.state_dict(), cfg, model)[0]
    assert (ours - theirs).abs().max().item() < 1e-5
    assert not torch.equal(unfolded["lm_head.weight"], tensors["lm_head.weight"])  # something was folded


def test_gpt2_mapping_refuses_what_it_cannot_express():
    cfg, model = _gpt()
    state = model.state_dict()
    tensors, _ = gpt_to_hf(state, cfg, model)
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (16, 48)  # Conv1D keeps (in, out)

    no_bias = {k: v for k, v in state.items() if k != "blocks.0.attn.qkv.bias"}
    with pytest.raises(ExportError, match=r"GPT-2 needs transformer.h.0.attn.c_attn.bias, but the model has no "
                                          r"blocks.0.attn.qkv.bias"):  # fmt: skip
        gpt_to_hf(no_bias, cfg, model)
    extra = dict(state, **{"blocks.0.attn.q_norm.weight": torch.ones(8)})
    with pytest.raises(ExportError, match=r"the model has blocks.0.attn.q_norm.weight, which GPT-2 has no place for"):
        gpt_to_hf(extra, cfg, model)

    @dataclass
    class QKNormConfig(GPTConfig):
        qk_norm: bool = True

    qk = QKNormConfig(n_layers=1, d_model=16, n_heads=2, seq_len=8, vocab_size=11)
    with pytest.raises(ExportError, match=r"model.qk_norm=True is a field the GPT-2 mapping does not know"):
        gpt_to_hf(state, qk, model)

    tied_cfg, tied = _gpt(tie_embeddings=True)
    tied_state = {k: v.clone() for k, v in tied.state_dict().items()}
    tied_state["head.weight"] += 1
    with pytest.raises(ExportError, match="tie_embeddings=true but the checkpoint's head.weight differs"):
        gpt_to_hf(tied_state, tied_cfg, tied)


# ---- tokenizers -------------------------------------------------------------------------------------
TEXTS = ["hello world", "  two spaces\tand a tab\n\nnew lines", "unicode: héllo — 日本語 🙂", "def f(x):\n    return x**2"]


def _text_data(tmp_path: Path, tokenizer: str):
    from scaling.data.config import DataConfig
    from scaling.data.prepare import prepare_text_files

    src = tmp_path / "docs.jsonl"
    if not src.exists():
        docs = [f"document {i}: " + " ".join(TEXTS) + f" the number {i * 7919}" for i in range(300)]
        src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = DataConfig(seq_len=16, tokenizer=tokenizer, vocab_size=300 if tokenizer == "bpe" else None, shard_samples=4096)
    return prepare_text_files([str(src)], str(tmp_path / tokenizer), cfg)


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_tokenizer_loads_in_transformers_and_encodes_as_ours(tmp_path, kind):
    manifest = _text_data(tmp_path, kind)
    tok, note = hf_tokenizer(manifest)
    assert kind.replace("byte", "byte-level").lower() in note.lower()
    folder = tmp_path / "tok"
    folder.mkdir()
    for name, text in tokenizer_files(tok, seq_len=16).items():
        (folder / name).write_text(text)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    ours = load_tokenizer(manifest)
    for text in TEXTS:
        ids = hf(text)["input_ids"]
        assert ids == ours.encode(text).tolist(), text
        assert hf.decode(ids) == ours.decode(ids) == text
    assert hf.eos_token == "<|eod|>" and hf.eos_token_id == manifest.eod_id
    assert len(hf) == manifest.vocab_size


def test_bpe_run_exports_its_tokenizer(cache, tmp_path):
    manifest = _text_data(tmp_path, "bpe")
    run = tmp_path / "run"
    # 16-token sequences: 256 tokens a step, so the budget and cadences are rescaled to 2 steps.
    rescaled = ("data=", "train.tokens", "train.checkpoint_every_tokens", "train.eval_every_tokens", "train.eval_tokens")
    overrides = [o for o in TINY if not o.startswith(rescaled)] + [
        f"data.path={manifest.location}", "train.tokens=512", "train.checkpoint_every_tokens=256",
        "train.eval_every_tokens=256", "train.eval_tokens=256",
    ]  # fmt: skip
    assert run_overrides([f"run.dir={run}", *overrides]) == 0
    out = export(run, tmp_path / "hf", step=STEP)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = hf_tok(TEXTS[2])["input_ids"]
    assert ids == load_tokenizer(manifest).encode(TEXTS[2]).tolist()
    hf = load_hf(out)
    assert hf.config.eos_token_id == manifest.eod_id and hf.config.vocab_size == manifest.vocab_size
    x = torch.tensor([ids[:16]])
    with torch.no_grad():
        assert (our_model(run)(x) - hf(x).logits).abs().max().item() < 1e-5


# ---- families without a Hugging Face architecture ---------------------------------------------
def test_cnn_is_refused_for_hf_and_round_trips_as_safetensors(cache, tmp_path):
    run = tmp_path / "cnn"
    overrides = ["model=cnn_debug", "data=digits", "train.global_batch_size=32", "train.tokens=64",
                 "train.checkpoint_every_tokens=32", "train.eval_tokens=64", "train.device=cpu",
                 "logger.wandb.mode=disabled"]  # fmt: skip
    assert run_overrides([f"run.dir={run}", f"data.cache_dir={cache}", *overrides], cache) == 0
    with pytest.raises(ExportError, match=r"model.family='cnn' has no standard Hugging Face Transformers "
                                          r"architecture .* use --format safetensors"):  # fmt: skip
        export(run, tmp_path / "hf", step=STEP)
    out = export(run, tmp_path / "st", fmt="safetensors", step=STEP)
    loaded = load_exported(out)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), our_model(run)(x))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ExportError, match="is not a scaling-safetensors/1 export"):
        load_exported(other)


# ---- more processes: partitions gathered across ranks (torchrun, gloo) --------------------------
@pytest.mark.slow
@pytest.mark.parametrize("stage,precision", [(3, "fp32"), (2, "bf16")])
def test_two_process_zero_checkpoints_are_gathered(cache, tmp_path, stage, precision):
    run = tmp_path / "run"
    # d_model 30 and d_ff 41 make the flat groups need padding at every rank boundary.
    base = [o for o in TINY if not o.startswith("model.d_model")] + ["model.d_model=30", "model.d_ff=41"]
    proc = run_train(cache, run, f"data.cache_dir={cache}", f"train.zero_stage={stage}", f"train.precision={precision}",
                     nproc=2, base=base)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = export(run, tmp_path / "hf", step=STEP)
    hf = load_hf(out)
    x = fixed_batch(65, 64)
    with torch.no_grad():
        assert (our_model(run)(x) - hf(x).logits).abs().max().item() < 1e-5
    if precision == "fp32":
        assert eval_loss(lambda x: hf(x).logits, run) == pytest.approx(recorded_eval_loss(run, STEP), abs=1e-5)
    else:
        held = torch_load(checkpoint_dirs(run)[0] / "state" / "mp_rank_00_model_states.pt")["module"]
        state, _ = read_model_state(checkpoint_dirs(run)[0], build_model(run_config(run).model))
        assert all(torch.equal(state[k].to(torch.bfloat16), v) for k, v in held.items())
