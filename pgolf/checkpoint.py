"""Float checkpoints of trained models, in the artifact container (raw arrays, no pickle).

Every tensor is stored losslessly as fp32 (bf16 and fp32 both convert exactly) and restored to its own
dtype, with the run's config in the directory. The post-training allocation reads these.
"""

import os

import torch

from pgolf.artifact import MAGIC, ArtifactError, pack, unpack
from pgolf.config import ConfigError, RunConfig, config_from_dict, config_to_dict
from pgolf.files import describe
from pgolf.model import GPT
from pgolf.quant import StoredTensor
from pgolf.storage import dequantize_state_dict

CHECKPOINT_FILE = "checkpoint.pgolf"


def save_checkpoint(model: GPT, config: RunConfig, path: str) -> None:
    with open(path, "wb") as f:
        f.write(checkpoint_bytes(model, config))


def checkpoint_bytes(model: GPT, config: RunConfig) -> bytes:
    stored = []
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu")
        stored.append(StoredTensor(name=name, kind="float32", shape=tuple(t.shape), dtype=str(t.dtype).removeprefix("torch."),
                                   bits=32, data=t.float().numpy()))
    blob, _ = pack(stored, {"checkpoint": True, "config": config_to_dict(config)}, "zstd", 3)
    return blob


def load_checkpoint(path: str, device: torch.device | str = "cpu") -> tuple[GPT, RunConfig]:
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise ArtifactError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    if not blob.startswith(MAGIC):
        raise ArtifactError(f"{path} is not a pgolf checkpoint: it is {describe(blob)}")
    try:
        meta, stored = unpack(blob)  # checks the container, and that no tensor holds NaN or inf
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    if not isinstance(meta, dict) or not meta.get("checkpoint"):
        raise ArtifactError(f"{path} is a quantized model file, not a float checkpoint")
    try:
        config = config_from_dict(meta["config"])
    except (KeyError, TypeError, AttributeError, ConfigError) as exc:
        raise ArtifactError(f"{path}: checkpoint config is malformed ({exc})") from None
    model = GPT(config.model)
    state = dequantize_state_dict(stored)
    expected = model.state_dict()
    mismatched = sorted(set(expected) ^ set(state)) or [k for k in expected if state[k].shape != expected[k].shape]
    if mismatched:
        raise ArtifactError(f"{path}: checkpoint tensors do not match its config ({mismatched[:3]})")
    model.load_state_dict(state, strict=True)
    return model.to(device), config


def load_any_checkpoint(path: str, seq_len: int = 1024, device: torch.device | str = "cpu") -> tuple[GPT, RunConfig]:
    """A pgolf checkpoint (file, or a folder holding checkpoint.pgolf) or an official train_gpt.py file."""
    from pgolf.official import import_official

    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, CHECKPOINT_FILE)):
            raise ArtifactError(f"{path} is a folder without a {CHECKPOINT_FILE}")
        path = os.path.join(path, CHECKPOINT_FILE)
    if path.endswith(".pgolf") or _starts_with(path, MAGIC):  # by content too: a renamed checkpoint still loads
        return load_checkpoint(path, device)
    state, config, _ = import_official(path, seq_len)
    model = GPT(config.model)
    model.load_state_dict(state, strict=True)
    return model.to(device), config


def _starts_with(path: str, prefix: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(prefix)) == prefix
    except OSError:
        return False  # the loader it goes to names the problem
