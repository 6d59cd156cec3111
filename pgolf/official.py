"""Interop with the challenge's own train_gpt.py: read its checkpoints into pgolf.

Parameter mapping (official name -> pgolf name) is the identity: pgolf's GPT uses the official layout,
    tok_emb.weight                      [vocab, dim]        embedding (tied output head unless lm_head.weight)
    lm_head.weight                      [vocab, dim]        untied output head
    skip_weights                        [layers // 2, dim]  U-Net skip gains
    blocks.N.attn.c_q.weight            [dim, dim]
    blocks.N.attn.c_k.weight, c_v       [kv_heads * head_dim, dim]
    blocks.N.attn.proj.weight           [dim, dim]
    blocks.N.attn.q_gain                [heads]
    blocks.N.mlp.fc.weight              [mlp_mult * dim, dim]
    blocks.N.mlp.proj.weight            [dim, mlp_mult * dim]
    blocks.N.attn_scale, mlp_scale      [dim]
    blocks.N.resid_mix                  [2, dim]
so a checkpoint's shape (layers, width, heads, KV heads, MLP multiplier, vocab, tied) follows from its
tensors. Files are read with torch.load(weights_only=True) only: a pickle that would run code, or
hold anything but tensors and plain containers, is refused before anything in it executes.
"""

import io
import pickle
import re
import warnings
import zlib

import torch

from pgolf.artifact import MAGIC
from pgolf.config import ModelConfig, RunConfig, TrainConfig
from pgolf.files import ZLIB_HEADERS, describe

BLOCK_TENSORS = {"attn.c_q.weight", "attn.c_k.weight", "attn.c_v.weight", "attn.proj.weight", "attn.q_gain",
                 "mlp.fc.weight", "mlp.proj.weight", "attn_scale", "mlp_scale", "resid_mix"}
TOP_TENSORS = {"tok_emb.weight", "lm_head.weight", "skip_weights"}
INT8_FORMAT = "int8_clean_per_row_v1"


class CheckpointImportError(ValueError):
    """A file that is not an official checkpoint pgolf can map; the message names the tensor or field."""


def _safe_load(blob: bytes, path: str):
    if not blob.startswith(b"PK\x03\x04") and blob[:1] != b"\x80":  # torch.save writes a zip, or (legacy) a pickle
        raise CheckpointImportError(f"{path} is not a torch checkpoint: it is {describe(blob)}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr; the error says it all
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a paragraph about its defaults; the weights-only unpickler's reason is one sentence of it.
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
        reason = found.group(1).split(". ")[0].strip()[:160] if found else "unsupported content"
        raise CheckpointImportError(f"refusing to load {path}: it holds more than plain tensors ({reason})") from None
    except Exception as exc:  # torch's readers fail on damaged bytes in many ways (zip, pickle, storages): all mean this
        first = str(exc).strip().split(". ")[0].splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointImportError(f"{path} is a damaged or truncated torch checkpoint ({first})") from None


def dequantize_official_int8(obj: dict, path: str) -> dict:
    """The float state dict of the official int8+zlib export (its own dequantization rule)."""
    if not isinstance(obj, dict) or obj.get("__quant_format__") != INT8_FORMAT:
        raise CheckpointImportError(f"{path}: not an official int8 export (expected __quant_format__ = {INT8_FORMAT!r})")
    try:
        state = {}
        qmeta = obj.get("qmeta", {})
        for name, q in obj["quantized"].items():
            dtype = getattr(torch, obj["dtypes"][name])
            scale = obj["scales"][name]
            if qmeta.get(name, {}).get("scheme") == "per_row" or scale.ndim > 0:
                state[name] = (q.float() * scale.float().view(q.shape[0], *([1] * (q.ndim - 1)))).to(dtype).contiguous()
            else:
                state[name] = (q.float() * float(scale.item())).to(dtype).contiguous()
        for name, t in obj["passthrough"].items():
            original = obj.get("passthrough_orig_dtypes", {}).get(name)
            state[name] = t.to(getattr(torch, original)).contiguous() if original else t.contiguous()
    except (KeyError, AttributeError, TypeError, ValueError, IndexError, RuntimeError) as exc:  # missing keys, wrong shapes
        raise CheckpointImportError(f"{path}: malformed int8 export ({type(exc).__name__}: {str(exc)[:160]})") from None
    return state


def read_official(path: str) -> tuple[dict, str]:
    """(float state dict, "float" | "int8") of an official final_model.pt or final_model.int8.ptz."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise CheckpointImportError(f"cannot read {path}: {exc.strerror}") from None
    if blob.startswith(MAGIC):
        raise CheckpointImportError(f"{path} is a pgolf model file or checkpoint, not an official train_gpt.py checkpoint "
                                    f"(pgolf score and search allocate read a checkpoint.pgolf directly)")
    kind = "float"
    if blob[:2] in ZLIB_HEADERS:  # the int8 export
        try:
            blob = zlib.decompress(blob)
        except zlib.error as exc:
            raise CheckpointImportError(f"{path}: corrupt or truncated zlib stream ({exc})") from None
        kind = "int8"
    obj = _safe_load(blob, path)
    state = dequantize_official_int8(obj, path) if kind == "int8" else obj
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointImportError(f"{path}: expected a state dict of tensors")
    check_finite(state, path)
    return state, kind


def check_finite(state: dict, path: str) -> None:
    """Refuse weights holding NaN or inf, naming the first such tensor (they would only surface as a NaN score)."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointImportError(f"{path}: tensor {name} holds {'NaN' if bool(torch.isnan(t).any()) else 'inf'}")


def infer_model_config(state: dict, path: str = "checkpoint") -> ModelConfig:
    """The ModelConfig whose parameters have exactly these names and shapes."""
    layers = set()
    for name in state:
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        if match and match.group(2) in BLOCK_TENSORS:
            layers.add(int(match.group(1)))
        elif name not in TOP_TENSORS:
            raise CheckpointImportError(f"{path}: tensor {name!r} has no place in the baseline GPT layout")
    if "tok_emb.weight" not in state or not layers:
        raise CheckpointImportError(f"{path}: no tok_emb.weight or no blocks.N.* tensors: not a baseline-family checkpoint")
    for name in ("tok_emb.weight", "blocks.0.attn.c_k.weight", "blocks.0.mlp.fc.weight"):  # the shape is read from these
        if state.get(name) is None or state[name].ndim != 2:
            raise CheckpointImportError(f"{path}: tensor {name!r} is missing or not a matrix")
    num_layers = max(layers) + 1
    vocab, dim = state["tok_emb.weight"].shape
    heads = state["blocks.0.attn.q_gain"].numel() if "blocks.0.attn.q_gain" in state else 0
    if not heads or dim % heads:
        raise CheckpointImportError(f"{path}: blocks.0.attn.q_gain gives {heads} heads, which does not divide width {dim}")
    head_dim = dim // heads
    kv_rows = state["blocks.0.attn.c_k.weight"].shape[0]
    if not kv_rows or kv_rows % head_dim or heads % (kv_rows // head_dim):
        raise CheckpointImportError(f"{path}: blocks.0.attn.c_k.weight has {kv_rows} rows, not a whole number of KV heads "
                                    f"of width {head_dim} dividing {heads} heads")
    hidden = state["blocks.0.mlp.fc.weight"].shape[0]
    config = ModelConfig(vocab_size=vocab, num_layers=num_layers, model_dim=dim, num_heads=heads,
                         num_kv_heads=kv_rows // head_dim, mlp_mult=hidden / dim, tie_embeddings="lm_head.weight" not in state)
    _check_shapes(state, config, path)
    return config


def _check_shapes(state: dict, config: ModelConfig, path: str) -> None:
    from pgolf.shapes import unfilled_state

    expected = unfilled_state(config)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointImportError(f"{path}: tensor {missing[0]!r} is missing for a {config.num_layers}-layer model")
    for name, t in expected.items():
        if tuple(state[name].shape) != tuple(t.shape):
            raise CheckpointImportError(f"{path}: tensor {name!r} has shape {tuple(state[name].shape)}, expected {tuple(t.shape)} "
                               f"for the shape inferred from the other tensors")


def import_official(path: str, seq_len: int = 1024) -> tuple[dict, RunConfig, str]:
    """(state dict, RunConfig, "float" | "int8") for an official checkpoint; seq_len is the run's TRAIN_SEQ_LEN
    (the official evaluation scores sequences of that length)."""
    state, kind = read_official(path)
    model = infer_model_config(state, path)
    return state, RunConfig(model=model, train=TrainConfig(seq_len=seq_len, batch_tokens=seq_len * 512)), kind
