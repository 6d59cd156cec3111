"""What the evaluation benches (ttt_grid.py, ttt_phased.py, ngram_tilt.py) score with: a checkpoint on its device, the
data root's validation prefix, the byte tables and the runtime, loaded one way for all of them."""

import dataclasses
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from pgolf.bpb import ByteLuts, load_tokenizer  # noqa: E402
from pgolf.checkpoint import load_any_checkpoint  # noqa: E402
from pgolf.datasets import default_data_root, resolve_data  # noqa: E402
from pgolf.shards import validation_tokens  # noqa: E402
from pgolf.submission import Runtime  # noqa: E402


@dataclasses.dataclass
class CheckpointScoring:
    model: object
    config: object
    evaluation: object  # the checkpoint's eval settings, at the sequence length asked for (if one was)
    luts: ByteLuts
    tokens: torch.Tensor  # the validation prefix, whole evaluation sequences
    runtime: Runtime


def load_scoring(checkpoint: str, seq_len: int, prefix_tokens: int, device: str, eval_seq_len: bool = True) -> CheckpointScoring:
    """seq_len: an official checkpoint's context; eval_seq_len: also score at it (else at the checkpoint's own)."""
    model, config = load_any_checkpoint(checkpoint, seq_len)
    model = model.to(device).eval()
    evaluation = config.resolved_eval()
    if eval_seq_len:
        evaluation = dataclasses.replace(evaluation, seq_len=seq_len)
    data = resolve_data(default_data_root(), config.model.vocab_size, None)
    luts = ByteLuts(load_tokenizer(data.tokenizer, config.model.vocab_size), config.model.vocab_size)
    tokens = validation_tokens(data.val_pattern, evaluation.seq_len, config.model.vocab_size, prefix_tokens)
    return CheckpointScoring(model, config, evaluation, luts, tokens, Runtime(device=torch.device(device)))
