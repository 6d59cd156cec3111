"""Float checkpoints of trained models, in the artifact container (raw arrays, no pickle).

Every tensor is stored losslessly as fp32 (bf16 and fp32 both convert exactly) and restored to its own
dtype, with the run's config in the directory. The post-training allocation reads these.
"""

import os

import torch

from pgolf.artifact import ArtifactError, pack, read_artifact
from pgolf.config import ConfigError, RunConfig, config_from_dict, config_to_dict
from pgolf.model import GPT
from pgolf.quant import StoredTensor, dequantize_state_dict

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
    meta, stored = read_artifact(path)
    if not meta.get("checkpoint"):
        raise ArtifactError(f"{path} is a quantized model file, not a float checkpoint")
    try:
        config = config_from_dict(meta["config"])
    except (KeyError, ConfigError) as exc:
        raise ArtifactError(f"{path}: checkpoint config is malformed ({exc})") from None
    model = GPT(config.model)
    state = dequantize_state_dict(stored)
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise ArtifactError(f"{path}: checkpoint tensors do not match its config ({sorted(missing)[:3]})")
    model.load_state_dict(state, strict=True)
    return model.to(device), config


def load_any_checkpoint(path: str, seq_len: int = 1024, device: torch.device | str = "cpu") -> tuple[GPT, RunConfig]:
    """A pgolf checkpoint (file, or a folder holding checkpoint.pgolf) or an official train_gpt.py file."""
    from pgolf.official import import_official

    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_FILE)
    if path.endswith(".pgolf"):
        return load_checkpoint(path, device)
    state, config, _ = import_official(path, seq_len)
    model = GPT(config.model)
    model.load_state_dict(state, strict=True)
    return model.to(device), config
