"""The exported script's settings as environment variables: where each config key's variable name is decided.

The standalone `train_gpt.py` reads every config key the way the field's scripts read their hyperparameters,
one generated line per key with the run's value as the literal default, e.g.
    "matrix_lr": float(os.environ.get("MATRIX_LR", 0.04)),
so a competitor tunes an export by hand (`MATRIX_LR=0.03 python train_gpt.py`), `search script-info` lists every
key with its default and type, and a script study can search an export. With no variable set the script runs
exactly the config it was assembled from.

Names: the official openai/parameter-golf train_gpt.py's name where it reads the same setting (OFFICIAL_NAMES),
otherwise SECTION_KEY in upper case (`model.xsa_last` -> MODEL_XSA_LAST, `quant.bits` -> QUANT_BITS).
Encodings: int, float and str as themselves; a bool as bool(int(...)) of 1 or 0 (the official TIE_EMBEDDINGS
form); a list or table (quant.bits, train.seq_len_stages, eval.ttt_targets, ...) as JSON text, e.g.
QUANT_BITS='{"*": 6, "tok_emb.weight": 8}'.
"""

import dataclasses
import json
import math

from pgolf.config import SECTIONS

# pgolf key -> the official script's variable for the same setting. Not here, on purpose: VAL_BATCH_SIZE (the
# official figure is the total over all ranks; eval.batch_tokens is per process), RUN_ID (pgolf has none).
OFFICIAL_NAMES = {
    "model.vocab_size": "VOCAB_SIZE",
    "model.num_layers": "NUM_LAYERS",
    "model.model_dim": "MODEL_DIM",
    "model.num_heads": "NUM_HEADS",
    "model.num_kv_heads": "NUM_KV_HEADS",
    "model.mlp_mult": "MLP_MULT",
    "model.tie_embeddings": "TIE_EMBEDDINGS",
    "model.logit_softcap": "LOGIT_SOFTCAP",
    "model.rope_base": "ROPE_BASE",
    "model.qk_gain_init": "QK_GAIN_INIT",
    "model.tied_embed_init_std": "TIED_EMBED_INIT_STD",
    "train.seed": "SEED",
    "train.seq_len": "TRAIN_SEQ_LEN",
    "train.batch_tokens": "TRAIN_BATCH_TOKENS",
    "train.iterations": "ITERATIONS",
    "train.max_wallclock_seconds": "MAX_WALLCLOCK_SECONDS",
    "train.warmup_steps": "WARMUP_STEPS",
    "train.warmdown_iters": "WARMDOWN_ITERS",
    "train.embed_lr": "EMBED_LR",
    "train.head_lr": "HEAD_LR",
    "train.tied_embed_lr": "TIED_EMBED_LR",
    "train.matrix_lr": "MATRIX_LR",
    "train.scalar_lr": "SCALAR_LR",
    "train.muon_momentum": "MUON_MOMENTUM",
    "train.muon_backend_steps": "MUON_BACKEND_STEPS",
    "train.muon_momentum_warmup_start": "MUON_MOMENTUM_WARMUP_START",
    "train.muon_momentum_warmup_steps": "MUON_MOMENTUM_WARMUP_STEPS",
    "train.beta1": "BETA1",
    "train.beta2": "BETA2",
    "train.adam_eps": "ADAM_EPS",
    "train.grad_clip_norm": "GRAD_CLIP_NORM",
    "train.val_every": "VAL_LOSS_EVERY",
    "train.log_every": "TRAIN_LOG_EVERY",
}


class ScriptEnvError(ValueError):
    """A config that cannot be written as environment reads (an unknown key, a value with no literal form)."""


def env_name(section: str, key: str) -> str:
    """The variable the exported script reads `section.key` from."""
    return OFFICIAL_NAMES.get(f"{section}.{key}", f"{section}_{key}".upper())


def all_env_names() -> dict[str, str]:
    """Every config key (section.key) -> its variable, for all keys RunConfig has."""
    return {f"{section}.{f.name}": env_name(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def _kind(section: str, key: str) -> str:
    fields = {f.name: f.type for f in dataclasses.fields(SECTIONS[section])} if section in SECTIONS else {}
    if key not in fields:
        raise ScriptEnvError(f"config key {section}.{key} is not a key of pgolf's config")
    annotation = fields[key]
    return annotation if isinstance(annotation, str) else annotation.__name__


def _quoted(text: str) -> str:
    """A string literal, in double quotes as the field's scripts write them where no escape is needed."""
    return f'"{text}"' if text.isprintable() and '"' not in text and "\\" not in text else repr(text)


def env_read(section: str, key: str, value) -> str:
    """The expression that reads `section.key` from its variable, `value` as the literal default."""
    name, kind = _quoted(env_name(section, key)), _kind(section, key)
    if kind in ("list", "dict"):
        return f"json.loads(os.environ.get({name}, {_quoted(json.dumps(value))}))"
    if kind == "bool":
        return f"bool(int(os.environ.get({name}, {int(bool(value))})))"
    if kind == "float":
        if not math.isfinite(float(value)):
            raise ScriptEnvError(f"config key {section}.{key} = {value!r} has no literal default")
        return f"float(os.environ.get({name}, {float(value)!r}))"
    if kind == "int":
        return f"int(os.environ.get({name}, {int(value)!r}))"
    return f"os.environ.get({name}, {_quoted(str(value))})"


def config_source(config_dict: dict) -> str:
    """`CONFIG: dict = {...}` for the script: the config's sections and keys, each value read from its variable."""
    lines = ["CONFIG: dict = {"]
    for section, values in config_dict.items():
        lines.append(f"    {_quoted(section)}: {{")
        lines += [f"        {_quoted(key)}: {env_read(section, key, value)}," for key, value in values.items()]
        lines.append("    },")
    return "\n".join(lines + ["}"])
