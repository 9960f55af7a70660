"""Export a finished run's model, so that tools outside the project can load it.

    scaling-export RUN_DIR --format hf --out DIR           Hugging Face folder (GPT -> GPT-2)
    scaling-export RUN_DIR --format safetensors --out DIR  our weights and config, any family
    scaling-export RUN_DIR --out DIR --step 800            an earlier checkpoint of the run
                                                           (default: the final step's)

`--format hf` writes what `transformers` loads with `GPT2LMHeadModel.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)`, with no code of ours:

    config.json            GPT-2 config: exact GELU (`gelu`, not `gelu_new`), no dropout, the run's
                           LayerNorm epsilon, `tie_word_embeddings` as the run had it
    model.safetensors      the weights, renamed to GPT-2's and transposed where GPT-2 keeps a
                           Conv1D (in, out) matrix where we keep a Linear (out, in) one
    tokenizer.json         the run's tokenizer, when its data has one (byte-level or BPE)
    tokenizer_config.json
    scaling_export.json    provenance: run id, step, config hash, data checksum, what was exported

Our GPT is GPT-2's architecture (pre-norm blocks, learned positions, biases in every block, no
bias in the head), and GPT-2's attention divides scores by sqrt(head_dim) as our SDPA call does.
The mapping refuses, naming the difference, whatever GPT-2 cannot express (a field it does not
know, a parameter it has no place for, a parameter it needs and the model lacks): nothing is
approximated. A family with no standard Hugging Face architecture is refused for `hf`; the
`safetensors` format writes our own state dict and model config, read back by `load_exported`.

Tokenizers. Byte-level: a `tokenizers` BPE with the 256 byte tokens (GPT-2's byte-to-character
alphabet) and no merges, so each UTF-8 byte is its own token as in `ByteTokenizer`; `<|eod|>`
(id 256) is a special token, so, as in every Hugging Face tokenizer, that literal string in a text
becomes id 256 rather than its seven bytes. BPE: the run's own `tokenizer.json`, as trained.
Synthetic data are token ids with no text: no tokenizer is exported (scaling_export.json says so).

Weights. A checkpoint is read only through `scaling.checkpoint.torch_load` (weights_only): no
file is unpickled. The weights are the fp32 master weights: an FSDP2 run's whole fp32 state dict
(`train.engine=fsdp`, gathered from its shards when saved); the module's own in an fp32 run at
ZeRO 0-2; gathered from every rank's partition of the optimizer's fp32 groups at ZeRO 1-3 when the
module does not hold them (ZeRO-3, or bf16 training), following the layout DeepSpeed's
`zero_to_fp32` reads (which itself unpickles, so it is not called); and, for bf16 at ZeRO 0, the
optimizer's per-parameter fp32 copies, checked against the module's bf16 weights.

A completed run is exported from the checkpoint of its final step, which the trainer saves when a
run completes (`train.final_checkpoint`, on by default); `--step` picks an earlier one explicitly.
A run directory without a final checkpoint (trained with `train.final_checkpoint=false`, or before
the trainer saved one) is exported with `--step N`. Failed and unfinished runs are refused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Optional

from scaling.checkpoint import zero_rank as _rank_key
from scaling.errors import ScalingError
from scaling.families.gpt import GPTConfig

FORMATS = ("hf", "safetensors")
EXPORT_FORMAT = "scaling-export/1"  # scaling_export.json
OWN_FORMAT = "scaling-safetensors/1"  # config.json of --format safetensors
PROVENANCE_NAME = "scaling_export.json"
WEIGHTS_NAME = "model.safetensors"


class ExportError(ScalingError):
    """A run cannot be exported as asked; the message names the reason and the fix."""


# ---- the run: result, config, checkpoint ----------------------------------------------------
def completed_result(run_dir: Path) -> dict:
    """The run's result.json, which must say `completed`; otherwise ExportError saying why."""
    from scaling.rundir import RunFileError, load_result

    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a run directory (no such folder); pass the run.dir a run trained into")
    try:
        result = load_result(run_dir)
    except RunFileError as e:
        raise ExportError(f"{e}; only a completed run is exported") from None
    if result is None:
        raise ExportError(
            f"{run_dir} has no result.json: the run is unfinished (still training, stopped, or killed); "
            f"run scaling-train on it again to finish it, then export"
        )
    if result["status"] != "completed":
        raise ExportError(
            f"{run_dir} holds a failed run ({result.get('error') or 'no error recorded'}); "
            f"fix the cause and train it to completion, then export"
        )
    return result


def run_config(run_dir: Path) -> Any:
    """The run's resolved config (config.yaml), as the trainer's dataclasses."""
    from omegaconf import OmegaConf

    from scaling.config import from_dict

    path = run_dir / "config.yaml"
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except FileNotFoundError:
        raise ExportError(f"{path} is missing: the trainer writes it when a run starts; the directory is not a run") from None
    except Exception as e:  # noqa: BLE001 - OmegaConf raises several YAML error types
        raise ExportError(f"{path} is not readable YAML ({type(e).__name__}: {e})") from None
    try:
        return from_dict(raw)
    except ScalingError as e:
        raise ExportError(f"{path} is not a config this version reads: {e}") from None


def pick_checkpoint(run_dir: Path, result: dict, step: Optional[int] = None) -> Path:
    """The checkpoint to export: the one at `step`, or by default the newest, which must hold the
    run's final weights (its step is the result's). Raises ExportError naming what there is."""
    from scaling.checkpoint import CheckpointError, read_meta
    from scaling.rundir import checkpoint_dirs

    ckpts = checkpoint_dirs(run_dir)
    steps = {_step_of(p): p for p in ckpts}
    have = ", ".join(str(s) for s in steps) or "none"
    final = int(result["steps"])
    if step is not None:
        if step not in steps:
            raise ExportError(f"{run_dir} has no checkpoint at step {step}; its checkpoints are at steps: {have}")
        folder = steps[step]
    elif final in steps:
        folder = steps[final]
    else:
        raise ExportError(
            f"{run_dir} completed at step {final}, but no checkpoint holds its final weights (checkpoints at steps: "
            f"{have}); export an earlier one with --step N (the run was trained with train.final_checkpoint=false, "
            f"or by a version of the trainer that did not checkpoint a run's final step)"
        )
    try:
        meta = read_meta(folder)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    # A checkpoint of another run left in the directory is not this run's model.
    for key in ("config_hash", "data_checksum"):
        if key in result and key in meta and meta[key] != result[key]:
            raise ExportError(
                f"{folder} holds another run than {run_dir}/result.json ({key} {meta[key]} vs {result[key]}); "
                f"move the stale checkpoint away"
            )
    return folder


def _step_of(folder: Path) -> int:
    return int(folder.name[len("step"):])


# ---- reading a checkpoint's weights -----------------------------------------------------------
# These read DeepSpeed's files through scaling.checkpoint.torch_load, as every checkpoint reader
# must; they belong beside it in scaling/checkpoint.py.


def read_model_state(folder: Path, skeleton: Any) -> tuple[dict[str, Any], str]:
    """The model's fp32 weights in checkpoint `folder`, at any ZeRO stage and precision, with a
    phrase saying where they came from. `skeleton` is the run's model (on the meta device: only
    its parameter names, shapes and order are read). Raises CheckpointError naming the file."""
    import torch

    from scaling.checkpoint import ENGINE_TAG, FSDP2_MODEL, CheckpointError, read_fsdp2_module, torch_load

    state_dir = folder / ENGINE_TAG
    if (state_dir / FSDP2_MODEL).exists():  # train.engine=fsdp: the whole state, gathered when saved
        module = _fp32(read_fsdp2_module(folder))
        for alias, _ in skeleton.named_parameters(remove_duplicate=False):  # tied weights
            if alias not in module and _shared_with(skeleton, alias) in module:
                module[alias] = module[_shared_with(skeleton, alias)]
        return module, "the fp32 weights gathered from FSDP2's shards"
    model_files = sorted(state_dir.glob("*model_states.pt"), key=_rank_key)
    if not model_files:
        raise CheckpointError(f"{state_dir} holds no model states file (*model_states.pt): the checkpoint is torn")
    first = torch_load(model_files[0], map_location="cpu")
    try:
        stage = int(first["ds_config"]["zero_optimization"]["stage"])
        module = dict(first["module"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{model_files[0]} is not a DeepSpeed model states file (no module or ZeRO stage)") from None
    if first.get("frozen_param_shapes"):
        raise CheckpointError(f"{model_files[0]} has frozen parameters, which the trainer never makes; not a run of this project")
    floats = [t for t in module.values() if t.is_floating_point()]
    if stage < 3 and all(t.dtype == torch.float32 for t in floats):
        return _fp32(module), f"the module's fp32 weights (ZeRO-{stage})"
    buffers = {k: v for k, v in module.items() if k in set(first.get("buffer_names") or [])}
    if stage == 0:
        return _fp32(buffers) | _stage0_masters(model_files[0], first, module, skeleton), "the fp32 master weights (ZeRO-0)"
    optim_files = sorted(state_dir.glob("*zero_pp_rank_*_optim_states.pt"), key=_rank_key)
    ranks = [_rank_key(f) for f in optim_files]
    if not optim_files or ranks != list(range(len(ranks))):
        raise CheckpointError(
            f"{state_dir} should hold one *zero_pp_rank_R_mp_rank_00_optim_states.pt per rank, from rank 0 on; "
            f"found ranks {ranks}: the checkpoint is torn"
        )
    parts = []
    for f in optim_files:
        osd = torch_load(f, map_location="cpu").get("optimizer_state_dict") or {}
        osd.pop("optimizer_state_dict", None)  # Adam's moments: not needed, dropped at once
        parts.append(osd)
    world = parts[0].get("partition_count")
    world = max(world) if isinstance(world, list) else world
    if world != len(optim_files):
        raise CheckpointError(f"{state_dir}: the optimizer was partitioned over {world} ranks but {len(optim_files)} "
                              f"rank files are there: the checkpoint is torn")  # fmt: skip
    shapes = first.get("param_shapes") or []
    try:
        state = (_merge_zero3 if stage == 3 else _merge_zero12)(parts, shapes, state_dir)
    except (KeyError, IndexError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{state_dir}: the ZeRO-{stage} partitions do not have the layout DeepSpeed writes "
                              f"({type(e).__name__}: {e}); the checkpoint is torn or of another DeepSpeed version") from None  # fmt: skip
    for alias, source in (first.get("shared_params") or {}).items():  # tied weights
        if source in state:
            state[alias] = state[source]
    return _fp32(buffers) | state, f"the fp32 master weights gathered from {world} ZeRO-{stage} partition(s)"


def _fp32(state: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def _merge_zero12(parts: list[dict], shapes: list[dict], where: Path) -> dict[str, Any]:
    """ZeRO-1/2: each param group is one flat fp32 vector cut into equal slices, one per rank;
    the parameters lie in it in `param_shapes` order, each followed by its alignment padding."""
    import torch

    from scaling.checkpoint import CheckpointError

    world = len(parts)
    paddings = parts[0].get("param_alignment_paddings")
    state: dict[str, Any] = {}
    for g, group in enumerate(shapes):
        flat = torch.cat([p["single_partition_of_fp32_groups"][g] for p in parts])
        offset = 0
        for i, (name, shape) in enumerate(group.items()):
            n = math.prod(shape)
            state[name] = flat.narrow(0, offset, n).view(shape).clone()
            offset += n + (paddings[g][i] if paddings else 0)
        # The group is padded at its end to a multiple of 2 x world (DeepSpeed's NCCL alignment).
        align = 2 * world
        if math.ceil(offset / align) != math.ceil(flat.numel() / align):
            raise CheckpointError(f"{where}: param group {g} holds {flat.numel()} numbers but its parameters take "
                                  f"{offset}: the checkpoint does not match its own shapes")  # fmt: skip
    return state


def _merge_zero3(parts: list[dict], shapes: list[dict], where: Path) -> dict[str, Any]:
    """ZeRO-3: every parameter is cut into `world` equal slices (the last padded), and each rank
    holds its slice of every parameter, in `param_shapes` order, across its flat groups."""
    import torch

    from scaling.checkpoint import CheckpointError

    world = len(parts)
    flats = [torch.cat(list(p["fp32_flat_groups"])) for p in parts]
    state: dict[str, Any] = {}
    offset = 0
    for name, shape in ((k, v) for group in shapes for k, v in group.items()):
        n = math.prod(shape)
        slice_numel = math.ceil(n / world)
        state[name] = torch.cat([f[offset : offset + slice_numel] for f in flats])[:n].view(shape).clone()
        offset += slice_numel
    if offset != flats[0].numel():
        raise CheckpointError(f"{where}: each rank holds {flats[0].numel()} numbers but the parameters take {offset} "
                              f"per rank: the checkpoint does not match its own shapes")  # fmt: skip
    return state


def _stage0_masters(path: Path, states: dict, module: dict, skeleton: Any) -> dict[str, Any]:
    """bf16 at ZeRO-0: the optimizer keeps one fp32 copy per parameter, listed by param group with
    no names. The trainer's groups are the matrices (ndim >= 2) then the rest, each in module
    order; every copy is checked against the module's bf16 weight, so another grouping is caught."""
    from scaling.checkpoint import CheckpointError

    groups = (states.get("optimizer") or {}).get("fp32_groups")
    if not groups:
        raise CheckpointError(f"{path} holds low-precision weights and no fp32 master copy; not a checkpoint this "
                              f"version of the trainer writes")  # fmt: skip
    named = list(skeleton.named_parameters())
    order = [n for n, p in named if p.ndim >= 2] + [n for n, p in named if p.ndim < 2]
    masters = [t for group in groups for t in group]
    if len(masters) != len(order):
        raise CheckpointError(f"{path} has {len(masters)} fp32 master weights for {len(order)} parameters")
    state = {}
    for name, master in zip(order, masters):
        held = module.get(name)
        if held is None or held.shape != master.shape or not bool((master.to(held.dtype) == held).all()):
            raise CheckpointError(
                f"{path}: the fp32 master weights do not line up with the parameters (at {name}); the trainer's "
                f"param groups changed: update _stage0_masters in scaling/export.py"
            )
        state[name] = master.float()
    for alias, _ in skeleton.named_parameters(remove_duplicate=False):  # tied weights
        if alias not in state:
            state[alias] = state[_shared_with(skeleton, alias)]
    return state


def _shared_with(model: Any, alias: str) -> str:
    target = model.get_parameter(alias)
    return next(n for n, p in model.named_parameters() if p is target)


# ---- muP and depth multipliers ---------------------------------------------------------------
def fold_multipliers(state: dict[str, Any], model_cfg: Any) -> dict[str, Any]:
    """Fold the model's constant multipliers into its weights, so that a plain GPT-2 computes the
    same logits; the identity under `sp`. Under muP (scaling.families.base.MupScales), each is a
    constant factor on a linear map's output, so it moves into that map's weight (and bias):
        output logits x 1/width_mult          -> head.weight
        residual branches x r^(-alpha)        -> attn.proj and mlp.proj, weight and bias
        attention logits sqrt(d_base) / d_head -> the query rows of attn.qkv, times sqrt(d_head),
                                                 since GPT-2 divides by sqrt(d_head) itself
    This is the only place multipliers are folded; `gpt_to_hf` refuses config fields it does not
    know, so a new multiplier cannot be exported unfolded by mistake."""
    if getattr(model_cfg, "parametrization", "sp") != "mup":
        return state
    from scaling.families import family_of

    scales = family_of(model_cfg).mup(model_cfg)
    out = dict(state)
    out["head.weight"] = state["head.weight"] * scales.output
    d, head_dim = model_cfg.d_model, model_cfg.d_model // model_cfg.n_heads
    base_head = model_cfg.mup.base_head_dim or head_dim
    query = math.sqrt(base_head) / head_dim * math.sqrt(head_dim)  # our logit scale / GPT-2's
    for i in range(model_cfg.n_layers):
        for part in ("attn.proj", "mlp.proj"):
            for kind in ("weight", "bias"):
                out[f"blocks.{i}.{part}.{kind}"] = state[f"blocks.{i}.{part}.{kind}"] * scales.residual
        for kind in ("weight", "bias"):
            qkv = state[f"blocks.{i}.attn.qkv.{kind}"].clone()
            qkv[:d] = qkv[:d] * query
            out[f"blocks.{i}.attn.qkv.{kind}"] = qkv
    return out


# ---- GPT -> Hugging Face GPT-2 ------------------------------------------------------------------
# The GPT config fields the mapping knows. A new field may change the computation in a way GPT-2
# cannot express, so a config with any other field is refused until the mapping learns it.
GPT2_FIELDS = ("family", "n_layers", "d_model", "n_heads", "d_ff", "seq_len", "vocab_size", "tie_embeddings",
               "parametrization", "mup")  # muP's multipliers are folded into the weights (fold_multipliers)


def gpt2_names(n_layers: int) -> list[tuple[str, str, bool]]:
    """(our name, GPT-2's name, transpose): GPT-2's Conv1D keeps (in, out) where Linear keeps (out, in)."""
    names = [("wte.weight", "transformer.wte.weight", False), ("wpe.weight", "transformer.wpe.weight", False)]
    for i in range(n_layers):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b, t in (
            ("ln_1.weight", "ln_1.weight", False), ("ln_1.bias", "ln_1.bias", False),
            ("attn.qkv.weight", "attn.c_attn.weight", True), ("attn.qkv.bias", "attn.c_attn.bias", False),
            ("attn.proj.weight", "attn.c_proj.weight", True), ("attn.proj.bias", "attn.c_proj.bias", False),
            ("ln_2.weight", "ln_2.weight", False), ("ln_2.bias", "ln_2.bias", False),
            ("mlp.fc.weight", "mlp.c_fc.weight", True), ("mlp.fc.bias", "mlp.c_fc.bias", False),
            ("mlp.proj.weight", "mlp.c_proj.weight", True), ("mlp.proj.bias", "mlp.c_proj.bias", False),
        ):  # fmt: skip
            names.append((ours + a, theirs + b, t))
    names += [("ln_f.weight", "transformer.ln_f.weight", False), ("ln_f.bias", "transformer.ln_f.bias", False)]
    return names


def gpt_to_hf(state: dict[str, Any], model_cfg: Any, skeleton: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """GPT-2 tensors and config.json for our GPT, or ExportError naming every difference GPT-2
    cannot express."""
    import torch
    import torch.nn as nn

    problems = [
        f"model.{f.name}={getattr(model_cfg, f.name)!r} is a field the GPT-2 mapping does not know, so it cannot tell "
        f"whether Hugging Face's GPT-2 expresses it; teach gpt_to_hf (and fold_multipliers) in scaling/export.py"
        for f in fields(model_cfg) if f.name not in GPT2_FIELDS
    ]  # fmt: skip
    norms = [m for m in skeleton.modules() if isinstance(m, nn.LayerNorm)]
    eps = {m.eps for m in norms}
    if len(eps) != 1 or not all(m.elementwise_affine and m.bias is not None for m in norms):
        problems.append(f"the model's LayerNorms (epsilon {sorted(eps)}, with weight and bias: "
                        f"{all(m.elementwise_affine and m.bias is not None for m in norms)}) are not GPT-2's one "
                        f"epsilon with weight and bias")  # fmt: skip
    tensors: dict[str, Any] = {}
    used = set()
    for ours, theirs, transpose in gpt2_names(model_cfg.n_layers):
        if ours not in state:
            problems.append(f"GPT-2 needs {theirs}, but the model has no {ours}")
            continue
        tensors[theirs] = (state[ours].t() if transpose else state[ours]).contiguous()
        used.add(ours)
    head = state.get("head.weight")
    used.add("head.weight")
    if head is None:
        problems.append("GPT-2 needs lm_head.weight, but the model has no head.weight")
    elif model_cfg.tie_embeddings:
        if "wte.weight" in state and not torch.equal(head, state["wte.weight"]):
            problems.append("model.tie_embeddings=true but the checkpoint's head.weight differs from wte.weight")
    else:
        tensors["lm_head.weight"] = head.contiguous()  # untied: GPT-2 loads its own head
    problems += [f"the model has {k}, which GPT-2 has no place for" for k in state if k not in used]
    if problems:
        raise ExportError("cannot export as Hugging Face GPT-2 (nothing is approximated):\n  - " + "\n  - ".join(problems))
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": model_cfg.vocab_size,
        "n_positions": model_cfg.seq_len,  # learned positions: the model has exactly seq_len of them
        "n_embd": model_cfg.d_model,
        "n_layer": model_cfg.n_layers,
        "n_head": model_cfg.n_heads,
        "n_inner": model_cfg.ffn_dim,
        "activation_function": "gelu",  # exact erf GELU, as F.gelu; gelu_new is GPT-2's tanh approximation
        "layer_norm_epsilon": eps.pop(),
        "resid_pdrop": 0.0,  # our GPT has no dropout
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,  # scores / sqrt(head_dim), as scaled_dot_product_attention's default
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": bool(model_cfg.tie_embeddings),
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    return tensors, config


# Families that map onto a standard Hugging Face architecture, by their config class -> mapping.
# Others are refused for --format hf and exported with --format safetensors.
HF_ARCHITECTURES: dict[type, Callable[..., tuple[dict[str, Any], dict[str, Any]]]] = {GPTConfig: gpt_to_hf}


# ---- tokenizers ---------------------------------------------------------------------------------
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (printable ASCII and Latin-1
    stand for themselves, the rest are shifted past 255), as `tokenizers`' ByteLevel uses it."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, shift = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + shift)
            shift += 1
    return chars


def byte_level_tokenizer() -> Any:
    """`ByteTokenizer` as a `tokenizers` Tokenizer: byte b is token b, `<|eod|>` is token 256."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from scaling.data.tokenizer import BYTE_EOD, EOD_TEXT

    vocab = {ch: b for b, ch in bytes_to_unicode().items()} | {EOD_TEXT: BYTE_EOD}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: every byte stays a token
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOD_TEXT])
    return tok


def hf_tokenizer(manifest: Any) -> tuple[Optional[Any], str]:
    """The run's tokenizer as a `tokenizers` Tokenizer, or None, and a phrase saying which."""
    from scaling.data import load_tokenizer

    kind = (manifest.tokenizer or {}).get("type")
    if kind == "byte":
        return byte_level_tokenizer(), "byte-level (257 tokens: 256 bytes and <|eod|>)"
    if kind == "bpe":
        return load_tokenizer(manifest).tok, f"the run's BPE tokenizer ({manifest.vocab_size} tokens)"
    return None, f"none: the run's data are {kind} token ids with no text form, so there is no tokenizer to export"


def tokenizer_files(tok: Any, seq_len: int) -> dict[str, str]:
    from scaling.data.tokenizer import EOD_TEXT

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOD_TEXT,  # documents are separated by <|eod|>, as GPT-2's by <|endoftext|>
        "eos_token": EOD_TEXT,
        "model_max_length": seq_len,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }
    return {"tokenizer.json": tok.to_str(), "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}


def run_manifest(cfg: Any, result: dict) -> Any:
    """The manifest of the data the run trained on (a built-in set is prepared if its cache is
    gone), checked against the result's data checksum."""
    from scaling.data import prepare_dataset
    from scaling.runid import data_checksum

    try:
        manifest = prepare_dataset(cfg.data)
    except ScalingError as e:
        raise ExportError(f"the run's data cannot be read for its tokenizer ({e}); make it readable, or export "
                          f"without the tokenizer (--no-tokenizer)") from None  # fmt: skip
    recorded = result.get("data_checksum")
    if recorded is not None and data_checksum(manifest) != recorded:
        raise ExportError(
            f"the data at {manifest.location} is not what the run trained on (data checksum {data_checksum(manifest)}, "
            f"the run's {recorded}): its tokenizer may differ; restore that data, or pass --no-tokenizer"
        )
    return manifest


# ---- export ------------------------------------------------------------------------------------
def export(run_dir: str | Path, out: str | Path, fmt: str = "hf", step: Optional[int] = None,
           tokenizer: bool = True) -> Path:  # fmt: skip
    """Export the completed run in `run_dir` to the new folder `out` (written in a temporary
    folder beside it, then renamed into place). Returns `out`; raises ExportError saying why not."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not a known export format; use one of {', '.join(FORMATS)}")
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder; pick a new --out, or delete it")
    result = completed_result(run_dir)
    import torch

    from scaling.checkpoint import CheckpointError
    from scaling.models import build_model

    cfg = run_config(run_dir)
    model_cfg = cfg.model
    to_hf = HF_ARCHITECTURES.get(type(model_cfg))
    if fmt == "hf" and to_hf is None:
        from scaling.families import FAMILIES

        mapped = sorted(f.name for f in FAMILIES.values() if f.config in HF_ARCHITECTURES)
        raise ExportError(
            f"model.family={getattr(model_cfg, 'family', None)!r} has no standard Hugging Face Transformers "
            f"architecture to export to (only {', '.join(mapped)} has one); use --format safetensors for our weights "
            f"and config, read back with scaling.export.load_exported"
        )
    folder = pick_checkpoint(run_dir, result, step)
    try:
        with torch.device("meta"):  # names, shapes and order only: no memory, no initialisation
            skeleton = build_model(model_cfg)
    except ScalingError as e:
        raise ExportError(f"{run_dir}/config.yaml does not build a model: {e}") from None
    try:
        state, source = read_model_state(folder, skeleton)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    _check_against(state, skeleton, folder)
    files: dict[str, str] = {}
    provenance: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "export_format": fmt,
        "run_id": result.get("run_id"),
        "step": _step_of(folder),
        "final_step": int(result["steps"]),
        "config_hash": result.get("config_hash"),
        "data_checksum": result.get("data_checksum"),
        "eval_loss": result.get("eval_loss") if _step_of(folder) == int(result["steps"]) else None,
        "weights": source,
        "model": _plain(model_cfg),
    }
    if fmt == "hf":
        tensors, config = to_hf(fold_multipliers(state, model_cfg), model_cfg, skeleton)
        note, eod = "not exported (--no-tokenizer)", None
        if tokenizer:
            manifest = run_manifest(cfg, result)
            tok, note = hf_tokenizer(manifest)
            eod = manifest.eod_id  # synthetic data have one too, with no tokenizer
            if tok is not None:
                files |= tokenizer_files(tok, model_cfg.seq_len)
        # Documents end (and so begin) with <|eod|>; GPT-2's own ids (50256) would be out of range.
        config |= {"bos_token_id": eod, "eos_token_id": eod}
        files["config.json"] = json.dumps(config, indent=2) + "\n"
        provenance["tokenizer"] = note
    else:
        tensors, tied = _untied(state, skeleton)
        own = {"format": OWN_FORMAT, "model": _plain(model_cfg), "tied": tied}
        files["config.json"] = json.dumps(own, indent=2) + "\n"
    files[PROVENANCE_NAME] = json.dumps(provenance, indent=2) + "\n"
    _write_folder(out, tensors, files)
    return out


def _check_against(state: dict[str, Any], skeleton: Any, folder: Path) -> None:
    """Every parameter and buffer of the run's model is in the checkpoint with its shape, and
    nothing else is."""
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict(keep_vars=True).items()}
    problems = [f"{k} is missing" for k in expected if k not in state]
    problems += [f"{k} has shape {tuple(state[k].shape)}, the model {expected[k]}" for k in expected
                 if k in state and tuple(state[k].shape) != expected[k]]  # fmt: skip
    problems += [f"{k} is not a parameter of the model" for k in state if k not in expected]
    if problems:
        raise ExportError(f"{folder} does not hold the model its run's config.yaml describes:\n  - " + "\n  - ".join(problems))


def _untied(state: dict[str, Any], skeleton: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The state without aliases (safetensors stores a tensor once) and {alias: name}."""
    named = dict(skeleton.named_parameters())
    tied = {a: _shared_with(skeleton, a) for a, _ in skeleton.named_parameters(remove_duplicate=False) if a not in named}
    return {k: v.contiguous() for k, v in state.items() if k not in tied}, tied


def _plain(model_cfg: Any) -> dict[str, Any]:
    from scaling.config import to_dict

    return to_dict(model_cfg)


def _write_folder(out: Path, tensors: dict[str, Any], files: dict[str, str]) -> None:
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        for name, text in files.items():
            (tmp / name).write_text(text)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_exported(folder: str | Path) -> Any:
    """Our model, rebuilt from a `--format safetensors` export (any family), in eval mode."""
    from safetensors.torch import load_file

    from scaling.config import from_dict
    from scaling.models import build_model

    folder = Path(folder)
    try:
        own = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{folder}/config.json is not readable ({e}); pass a folder made by scaling-export") from None
    if not isinstance(own, dict) or own.get("format") != OWN_FORMAT:
        raise ExportError(f"{folder}/config.json is not a {OWN_FORMAT} export (a Hugging Face one loads with "
                          f"transformers' from_pretrained)")  # fmt: skip
    model = build_model(from_dict({"model": own["model"]}).model)
    state = load_file(str(folder / WEIGHTS_NAME))
    for alias, name in own.get("tied", {}).items():
        state[alias] = state[name]
    model.load_state_dict(state, strict=True)
    return model.eval()


# ---- CLI ---------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="scaling-export",
        description="Export a completed run's model: a Hugging Face folder (GPT as GPT-2) or our own safetensors.",
    )
    ap.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (its result.json must say completed)")
    ap.add_argument("--format", dest="fmt", default="hf",
                    help=f"one of {', '.join(FORMATS)} (default hf)")  # fmt: skip
    ap.add_argument("--out", required=True, help="the folder to create (must not exist, or be empty)")
    ap.add_argument("--step", type=int, default=None,
                    help="export the checkpoint at this step (default: the run's final step)")  # fmt: skip
    ap.add_argument("--no-tokenizer", action="store_true", help="hf: do not export the tokenizer")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        out = export(args.run_dir, args.out, fmt=args.fmt, step=args.step, tokenizer=not args.no_tokenizer)
    except ScalingError as e:
        print(f"scaling-export: {e}", file=sys.stderr)
        return 2
    info = json.loads((out / PROVENANCE_NAME).read_text())
    print(f"exported run {info['run_id']} (step {info['step']}, {info['weights']}) to {out} as {args.fmt}")
    if "tokenizer" in info:
        print(f"  tokenizer: {info['tokenizer']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
