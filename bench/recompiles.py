"""Graphs compiled inside the timed training, counted by Dynamo's own counters, on the CPU.

Three runs of a small compiled model (Dynamo's aot_eager backend: the same graphs and guards as inductor, without
the code generation), each with one event that used to recompile: validation at a longer eval length, a change of
context stage, the switch to QAT. For each: the frames Dynamo compiled during warmup, during the first timed step,
and after it.

    PGOLF_DATA=../shared/data .venv/bin/python bench/recompiles.py            # this checkout
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/recompiles.py   # another one (before/after)
"""

import functools
import json

import torch
import torch._dynamo
from torch._dynamo.utils import counters

import pgolf.train
from pgolf.config import config_from_dict
from pgolf.datasets import DataPaths, default_data_root
from pgolf.run import subset_validator
from pgolf.submission import Runtime, train_model

BACKEND = "aot_eager"


def small(**train):
    return config_from_dict({
        "model": dict(vocab_size=1024, num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, mlp_mult=2.0),
        "train": dict(seq_len=64, batch_tokens=1024, iterations=6, max_wallclock_seconds=0.0, warmdown_iters=2, log_every=1,
                      val_tokens=2048, compile="on", **train),
        "eval": dict(batch_tokens=16384),
    })


CASES = {
    "validation at another length": (small(val_every=2), dict(seq_len=128)),
    "seq_len stage change": (small(seq_len_stages=[32]), {}),
    "QAT switch": (small(qat_fraction=0.5), {}),
}


def use_backend(name: str) -> None:
    if hasattr(pgolf.train, "COMPILE_BACKEND"):
        pgolf.train.COMPILE_BACKEND = name
    else:  # a checkout from before the constant: every torch.compile call gets the backend
        torch.compile = functools.partial(torch.compile, backend=name)


def count_case(config, eval_changes: dict, data: DataPaths) -> dict:
    for key, value in eval_changes.items():
        setattr(config.eval, key, value)
    torch._dynamo.reset()
    counters.clear()
    marks = {}

    def log(message: str) -> None:
        if message.startswith("step 1/") and "train_loss" in message:
            marks["after first step"] = counters["stats"]["unique_graphs"]

    runtime = Runtime(torch.device("cpu"))
    before = counters["stats"]["unique_graphs"]
    _, result = train_model(config, data.train_pattern, runtime, validate_fn=subset_validator(config, data, runtime), log=log)
    total = counters["stats"]["unique_graphs"] - before
    first = marks["after first step"] - before
    return {"graphs compiled up to the end of the first timed step (warmup included)": first,
            "recompiles after the first timed step": total - first, "steps": result.steps,
            "validations": len(result.val_history)}


def main() -> None:
    use_backend(BACKEND)
    root = default_data_root()
    shards = f"{root}/datasets/fineweb_sample_sp1024"
    data = DataPaths(train_pattern=f"{shards}/fineweb_train_*.bin", val_pattern=f"{shards}/fineweb_val_*.bin",
                     tokenizer=f"{root}/tokenizers/fineweb_1024_bpe.model", vocab_size=1024)
    report = {name: count_case(config, changes, data) for name, (config, changes) in CASES.items()}
    print(json.dumps({"pgolf": pgolf.__file__, "torch": torch.__version__, "backend": BACKEND, "cases": report}, indent=2))


if __name__ == "__main__":
    main()
