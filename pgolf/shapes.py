"""A model config's stored tensors (names, shapes, dtypes) without drawing their weights: what the byte predictor and
the checkpoint importer read.

Not on the meta device: there `normal_` and `arange` run through torch._refs, whose first call imports Dynamo (1.1 s,
and 0.4 s more at exit, on the AMD machines), once in every CLI and coordinator process that predicts bytes. On the
CPU with the random fills skipped, a 36M-parameter model's tensors take ~0.15 s and no Dynamo. Not part of the exported
script: pgolf/model.py's own initialisation is unchanged.
"""

import torch
from torch.overrides import TorchFunctionMode

from pgolf.model import GPT

# What nn.Embedding, nn.Linear and the model's init fill with (nn.init's functions are torch functions of their own).
_RANDOM_FILLS = frozenset({torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.kaiming_uniform_,
                           torch.Tensor.normal_, torch.Tensor.uniform_})


class _NoRandomFills(TorchFunctionMode):
    """Leaves a tensor as it is where a random fill was asked for (no draw, the global RNG untouched). Modes are per
    thread: no other thread's model is affected."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RANDOM_FILLS:  # nn.init passes its tensor by keyword
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def unfilled_state(model_cfg) -> dict:
    """The state dict of GPT(model_cfg) on the CPU, its random fills skipped: every tensor's name, shape and dtype
    (the values are not the model's)."""
    with torch.device("cpu"), _NoRandomFills():
        return GPT(model_cfg).state_dict()
