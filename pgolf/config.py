"""Run configuration: every setting of one trained-and-scored model, gathered in one place.

A config is four sections (model, train, quant, eval). Each is a dataclass with the defaults of the
official baseline; `config_from_dict` validates a nested dict (e.g. parsed TOML) and names any unknown
key or bad value. This module is part of the exported submission script, so it carries no package-relative
imports. The values a matrix-format table may hold are described with the formats, in pgolf/storage.py.
"""

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field

from pgolf.storage import format_table_error


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message names it."""


@dataclass
class ModelConfig:
    vocab_size: int = 1024
    num_layers: int = 9  # unique (stored) blocks
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: float = 2.0  # hidden = round(mlp_mult * model_dim)
    tie_embeddings: bool = True
    # Shared depth: blocks [loop_start, loop_start + loop_len) run loop_repeats times in training.
    loop_start: int = 0
    loop_len: int = 0
    loop_repeats: int = 1
    logit_softcap: float = 30.0
    rope_base: float = 10000.0
    qk_gain_init: float = 1.5
    tied_embed_init_std: float = 0.005
    # Record modules (pgolf/model.py), each off by default; "last k" counts stored blocks.
    parallel_last: int = 0  # last k blocks: attention and MLP read the same normalised input
    xsa_last: int = 0  # last k blocks: exclusive self-attention (drop each output's part along its own value)
    smear_gate: bool = False  # mix the previous token's embedding in, never across a document start
    bos_id: int = 1  # the token that starts a document
    mlp_leaky_slope: float = 0.0  # MLP activation leaky_relu(x, slope)^2 (0 = relu^2)
    rotary_fraction: float = 1.0  # fraction of each head's dims rotated by RoPE
    ln_scale: bool = False  # block i scales its normalised inputs by 1/sqrt(i+1)
    attn_gate: str = "off"  # off | full | sparse: per-head output gate from the block's input (sparse: its first channels)
    attn_gate_window: int = 12
    logit_rescale: bool = False  # learned scales of the positive and negative logits before the softcap
    loop_lora_rank: int = 0  # per-repeat low-rank deltas of the shared blocks' matrices
    loop_boundary_norm: bool = False  # RMSNorm of the residual between repeats of the shared segment
    embed_rank: int = 0  # factored tied embedding: [vocab, r] and a projection to the model width

    def rotary_dims(self) -> int:
        return int(round(self.rotary_fraction * (self.model_dim // self.num_heads)))


MODULE_KEYS = ("parallel_last", "xsa_last", "smear_gate", "bos_id", "mlp_leaky_slope", "rotary_fraction", "ln_scale", "attn_gate",
               "attn_gate_window", "logit_rescale", "loop_lora_rank", "loop_boundary_norm", "embed_rank")


def model_settings(model: ModelConfig) -> dict:
    """The model keys a model file records: the record-module ones only where they differ from their defaults, so
    the file of a model without them stays byte for byte what it was before they existed."""
    default = ModelConfig()
    return {k: v for k, v in dataclasses.asdict(model).items() if k not in MODULE_KEYS or v != getattr(default, k)}


@dataclass
class TrainConfig:
    seed: int = 1337
    seq_len: int = 1024
    batch_tokens: int = 524_288
    micro_batch_tokens: int = 0  # tokens per forward/backward pass of one rank; 0 = the rank's whole share at once
    # Each step's batch is cut from the token stream as this many consecutive spans (+1 target token
    # each), shared out in order over ranks and micro-batches: the official loader's cut into its 8
    # ranks x accumulation steps, so the model sees the official script's sequences however it batches.
    data_spans: int = 8
    iterations: int = 20_000
    max_wallclock_seconds: float = 600.0  # 0 = no wallclock cap
    # Seconds of that cap kept free after the last step for the post-training steps that count as training
    # (calibration activations and GPTQ, when a quant format needs them).
    reserve_seconds: float = 0.0
    warmup_steps: int = 0  # priming steps (compile, caches) whose updates are undone
    lr_warmup_steps: int = 0  # linear learning-rate ramp at the start
    warmdown_iters: int = 1200
    embed_lr: float = 0.6
    head_lr: float = 0.008
    tied_embed_lr: float = 0.05
    matrix_lr: float = 0.04
    scalar_lr: float = 0.04
    weight_decay: float = 0.0  # decoupled, on block matrices; also a byte-size control
    muon_momentum: float = 0.95
    muon_backend_steps: int = 5
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.0
    val_every: int = 0  # steps between validation reports during training; 0 = none
    val_every_seconds: float = 0.0  # or training seconds between reports (comparable across model speeds)
    val_tokens: int = 0  # tokens of the validation split used for those reports; 0 = all
    log_every: int = 50
    compile: str = "auto"  # auto (CUDA only) | on | off
    autocast: bool = True  # bf16 autocast for matmuls
    # Training fast paths (pgolf/fused.py, CPU batched-matmul attention); false = the official composition.
    fused_ops: bool = True
    # QAT: over the last qat_fraction of training (by steps, or by the wallclock cap if that ends it
    # first) the forward pass sees the block matrices fake-quantized at qat_bits with clip multiplier
    # qat_clip (as in quant.clip; 0 = row max), gradients passed straight through. 0 = off.
    qat_fraction: float = 0.0
    qat_bits: int = 6
    qat_clip: float = 0.0
    # The token-side matrices (tied embedding/head, untied head, factored up-projection) fake-quantized too,
    # at their own width and clip, over the same phase: 0 = left alone (they are stored at their own width).
    qat_embed_bits: int = 0
    qat_embed_clip: float = 0.0
    # Rate term, with QAT only: rate_lambda x the estimated coded bits per weight of the fake-quantized
    # matrices is added to the loss, trading a little loss for bytes. 0 = off.
    rate_lambda: float = 0.0
    # EMA of the weights: an fp32 shadow of every parameter, shadow = d x shadow + (1 - d) x weights after each
    # optimizer step, from the starting weights (the records use ~0.997). At the end it replaces the weights, so
    # it is what is calibrated, quantized and stored; validation during training sees the live weights. 0 = off.
    ema_decay: float = 0.0
    # Context schedule at fixed batch_tokens: equal shares of training progress (timed as QAT is) at each of
    # these (at most 3) lengths, then at seq_len, e.g. [1024, 2048] with seq_len 3072. Eval keeps eval.seq_len. [] = off.
    seq_len_stages: list = field(default_factory=list)
    lr_floor: float = 0.0  # the warmdown stops at this fraction of each lr (the records' MIN_LR); not the warmup
    muon_ns: str = "quintic"  # Muon's Newton-Schulz coefficients: quintic (fixed) | polar_express (per iteration)


@dataclass
class QuantConfig:
    # Tensor-name glob -> bits. Later entries override earlier ones. 2..8 = signed integers with
    # per-row scales, 16 = fp16. Tensors of at most keep_float_max_numel elements stay float.
    bits: dict = field(default_factory=lambda: {"*": 8})
    # Tensor-name glob -> clip multiplier k (clip = k * row std); 0 = the official percentile clip.
    clip: dict = field(default_factory=lambda: {"*": 0.0})
    clip_percentile: float = 99.99984
    keep_float_max_numel: int = 65_536
    # Tensor-name glob -> how integer symbols are chosen: "rtn" (round to nearest) or "gptq" (error
    # feedback through the inverse Hessian of the layer's inputs; calibrates after training).
    quantizer: dict = field(default_factory=lambda: {"*": "rtn"})
    # Tensor-name glob -> AWQ-lite exponent a: input channel j is scaled by (rms activation of j)^a before
    # quantizing and unscaled at load (0 = off; calibrates after training).
    awq: dict = field(default_factory=lambda: {"*": 0.0})
    # Tensor-name glob -> fraction of a matrix's weights, the largest in magnitude, stored exactly in fp16.
    outliers: dict = field(default_factory=lambda: {"*": 0.0})
    # Tensor-name glob -> rank of a stored low-rank correction of the quantization error (0 = none).
    rank: dict = field(default_factory=lambda: {"*": 0})
    rank_bits: int = 16  # low-rank factors: 16 = fp16, 8 = int8 with one fp16 scale per row
    # Calibration for gptq / awq: activations of this many training tokens (never validation).
    calib_tokens: int = 65_536
    gptq_damp: float = 0.01  # fraction of the mean Hessian diagonal added to it
    gptq_block: int = 128  # columns updated together
    gptq_act_order: bool = True  # quantize the columns with the largest input energy first
    compressor: str = "zstd"  # zstd | lzma | rans (pgolf/entropy_codec.py)
    level: int = 22
    # "similar": MLP hidden units stored in the order that codes smallest (pgolf/row_order.py); "off": as trained.
    row_order: str = "off"
    # The counted train_gpt.py: "plain" (as assembled) or "compressed" (its self-extracting form, pgolf/selfextract.py,
    # as the records count their code). Not written into the script's own config: it runs the same either way.
    code: str = "plain"


@dataclass
class EvalConfig:
    seq_len: int = 0  # 0 = the training sequence length
    stride: int = 0  # 0 = non-overlapping chunks (official); else sliding window scoring `stride` new tokens
    batch_tokens: int = 65_536  # per process; the official 524,288 over 8 ranks (or 8 accumulation steps)
    repeats: int = 0  # eval unroll count of the shared segment; 0 = as in training
    autocast: bool = True
    # Score-first test-time training (pgolf/ttt.py): each chunk of validation targets is scored, then adapted on.
    ttt: str = "off"  # off | lora (rank-r adapters on ttt_targets) | full (the ttt_targets tensors themselves)
    ttt_targets: list = field(default_factory=lambda: ["*.c_q", "*.c_v", "head"])  # module (lora) or tensor (full) globs
    ttt_rank: int = 8
    ttt_optimizer: str = "adam"  # adam | sgd
    ttt_lr: float = 0.01
    ttt_steps: int = 1  # gradient steps on each chunk after it is scored
    ttt_chunk: int = 256  # targets per chunk; at most the eval sequence length
    ttt_reset: str = "document"  # document: fresh adapters at every BOS | never: one stream carries them on
    ttt_phase_tokens: int = 0  # with ttt_reset = never: adapt on the first this many targets only (0 = all)
    # Phased global TTT (with ttt_reset = document): the documents that start within the first ttt_global_tokens
    # targets are scored first; then the tensors named by ttt_global_targets adapt on those targets (ttt_global_steps
    # passes), and every later document is scored, with its own adapters, on top of those weights. 0 = off.
    ttt_global_tokens: int = 0
    ttt_global_targets: list = field(default_factory=lambda: ["*.c_q.weight", "*.c_v.weight"])
    ttt_global_steps: int = 1
    # Token n-gram tilt (pgolf/ngram.py): the logit of a token an order-n context predicts from text already scored,
    # with confidence above the threshold, is raised by the boost and the distribution renormalised. 0 = off.
    ngram_order: int = 0
    ngram_threshold: float = 0.8
    ngram_boost: float = 2.625


TTT_KEYS = tuple(f.name for f in dataclasses.fields(EvalConfig) if f.name.startswith("ttt"))
NGRAM_KEYS = tuple(f.name for f in dataclasses.fields(EvalConfig) if f.name.startswith("ngram"))


GLOBAL_TTT_KEYS = tuple(k for k in TTT_KEYS if k.startswith("ttt_global"))


def eval_settings(evaluation: "EvalConfig") -> dict:
    """The eval keys a model file records: a mode's keys only when it is on (TTT, its global phase, n-gram tilt), so
    the file of a model scored without it stays byte for byte what it was before the mode existed."""
    off = ((TTT_KEYS if evaluation.ttt == "off" else GLOBAL_TTT_KEYS if not evaluation.ttt_global_tokens else ())
           + (NGRAM_KEYS if not evaluation.ngram_order else ()))
    return {k: v for k, v in dataclasses.asdict(evaluation).items() if k not in off}


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def eval_seq_len(self) -> int:
        return self.eval.seq_len or self.train.seq_len

    def eval_repeats(self) -> int:
        return self.eval.repeats or self.model.loop_repeats

    def resolved_eval(self) -> "EvalConfig":
        """The eval settings with defaults (0 = as in training) made concrete."""
        return dataclasses.replace(self.eval, seq_len=self.eval_seq_len(), repeats=self.eval_repeats())


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "quant": QuantConfig, "eval": EvalConfig}
QUANT_BITS_ALLOWED = (2, 3, 4, 5, 6, 7, 8, 16)
COMPRESSORS = ("zstd", "lzma", "rans", "brotli")
OPTIONAL_COMPRESSORS = {"brotli": "brotli"}  # compressor -> the package it needs (pip install pgolf[brotli])
CODE_FORMS = ("plain", "compressed")
ROW_ORDERS = ("off", "similar")
MUON_NS = ("quintic", "polar_express")
TTT_MODES = ("off", "lora", "full")
TTT_OPTIMIZERS = ("adam", "sgd")
TTT_RESETS = ("document", "never")
MAX_TTT_RANK = 256
MAX_NGRAM_ORDER = 64
MAX_SEQ_STAGES = 3  # with the final length, each with and without QAT: within torch.compile's 8 graphs per function


def _coerce(section: str, key: str, value, annotation):
    where = f"{section}.{key}"
    if annotation in ("dict", dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where} must be a table of pattern = value")
        return dict(value)
    if annotation in ("list", list):
        if not isinstance(value, list):
            raise ConfigError(f"config key {where} must be an array, got {value!r}")
        return list(value)
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation, annotation)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {where} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {where} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {where} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"config key {where} must be a string, got {value!r}")
    return value


def config_from_dict(data: dict) -> RunConfig:
    """Build a validated RunConfig; unknown sections or keys and bad values raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError("config must be a table of sections")
    sections = {}
    for section, values in data.items():
        cls = SECTIONS.get(section)
        if cls is None:
            raise ConfigError(f"unknown config section [{section}] (known: {', '.join(SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"config section [{section}] must be a table")
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"unknown config key {section}.{key}")
            kwargs[key] = _coerce(section, key, value, known[key].type)
        sections[section] = cls(**kwargs)
    config = RunConfig(**sections)
    validate(config)
    return config


def config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def load_config_file(path) -> RunConfig:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a TOML config file (binary, not UTF-8 text)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if not data:  # an emptied file must not silently mean the 9x512 baseline
        raise ConfigError(f"{path}: config file is empty (for the defaults, name the shipped config 'baseline')")
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def compressor_missing(name: str) -> str | None:
    """'<name> needs the <package> package, which is not installed' for an optional compressor absent here, else None."""
    import importlib.util

    package = OPTIONAL_COMPRESSORS.get(name)
    if package is None or importlib.util.find_spec(package) is not None:
        return None
    return f"{name} needs the {package} package, which is not installed (pip install {package})"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModuleRule:
    """A record module's structural rule on one key, evaluated for one config: `validate` rejects the config with
    `message` where it does not hold, and a sampled trial takes the `repaired` value (space/sample.py)."""
    key: str  # section.name
    holds: bool
    message: str
    repaired: object


def module_rules(m: ModelConfig, t: TrainConfig) -> list[ModuleRule]:
    """The rules that tie the record modules to the model's shape (and QAT's extras to QAT), written once for both
    rejecting and repairing: a new module adds its rules here. Needs positive num_heads (checked before)."""
    head_dim = m.model_dim // m.num_heads
    rotary = m.rotary_dims()
    rules = [ModuleRule(f"model.{key}", 0 <= getattr(m, key) <= m.num_layers,
                        f"model.{key} must be in [0, model.num_layers {m.num_layers}], got {getattr(m, key)}",
                        min(getattr(m, key), m.num_layers)) for key in ("parallel_last", "xsa_last")]
    rules.append(ModuleRule("model.rotary_fraction", 0 < m.rotary_fraction <= 1 and rotary >= 2 and rotary % 2 == 0,
                            f"model.rotary_fraction {m.rotary_fraction} must rotate an even number (>= 2) of the head's dims, got {rotary}",
                            min(max(2, 2 * round(m.rotary_fraction * head_dim / 2)), head_dim) / head_dim))
    rules.append(ModuleRule("model.attn_gate_window", m.attn_gate != "sparse" or 1 <= m.attn_gate_window <= m.model_dim,
                            f"model.attn_gate_window must be in [1, model.model_dim], got {m.attn_gate_window}",
                            min(m.attn_gate_window, m.model_dim)))
    for key, off in (("loop_lora_rank", 0), ("loop_boundary_norm", False)):  # per-repeat extras of the shared segment
        value = getattr(m, key)
        rules.append(ModuleRule(f"model.{key}", m.loop_len > 0 or not value,
                                f"model.{key} = {value} needs a shared segment (model.loop_len > 0)", value if m.loop_len > 0 else off))
    rules.append(ModuleRule("model.embed_rank", 0 <= m.embed_rank < m.model_dim,
                            f"model.embed_rank must be in [0, model.model_dim), got {m.embed_rank}",
                            0 if m.embed_rank >= m.model_dim else m.embed_rank))
    for key, off in (("qat_embed_bits", 0), ("rate_lambda", 0.0)):  # both act on the fake-quantized weights
        value = getattr(t, key)
        rules.append(ModuleRule(f"train.{key}", value == 0 or t.qat_fraction > 0, f"train.{key} needs QAT (train.qat_fraction > 0)",
                                value if t.qat_fraction > 0 else off))
    return rules


def validate(config: RunConfig) -> None:
    """Reject configurations that cannot be built or trained, naming the offending key."""
    m, t, q, e = config.model, config.train, config.quant, config.eval
    _check(m.vocab_size >= 8, f"model.vocab_size must be at least 8, got {m.vocab_size}")
    _check(m.vocab_size <= 65_535, f"model.vocab_size {m.vocab_size} does not fit the uint16 shard format")
    _check(m.num_layers >= 1, f"model.num_layers must be at least 1, got {m.num_layers}")
    _check(m.num_heads >= 1 and m.num_kv_heads >= 1, "model.num_heads and model.num_kv_heads must be positive")
    _check(m.model_dim % m.num_heads == 0, f"model.model_dim {m.model_dim} is not divisible by model.num_heads {m.num_heads}")
    _check(m.num_heads % m.num_kv_heads == 0, f"model.num_heads {m.num_heads} is not divisible by model.num_kv_heads {m.num_kv_heads}")
    _check((m.model_dim // m.num_heads) % 2 == 0, f"head dim {m.model_dim // m.num_heads} must be even for RoPE")
    _check(m.mlp_mult > 0, f"model.mlp_mult must be positive, got {m.mlp_mult}")
    _check(m.logit_softcap > 0, f"model.logit_softcap must be positive, got {m.logit_softcap}")
    _check(m.loop_len >= 0 and m.loop_start >= 0, "model.loop_start and model.loop_len must be non-negative")
    _check(m.loop_start + m.loop_len <= m.num_layers,
           f"shared segment [{m.loop_start}, {m.loop_start + m.loop_len}) exceeds model.num_layers {m.num_layers}")
    _check(m.loop_repeats >= 1, f"model.loop_repeats must be at least 1, got {m.loop_repeats}")
    _check(m.loop_len > 0 or m.loop_repeats == 1, "model.loop_repeats > 1 needs a shared segment (model.loop_len > 0)")
    _check(0 <= m.bos_id < m.vocab_size, f"model.bos_id must be a token id below model.vocab_size, got {m.bos_id}")
    _check(0 <= m.mlp_leaky_slope <= 1, f"model.mlp_leaky_slope must be in [0, 1], got {m.mlp_leaky_slope}")
    _check(m.attn_gate in ("off", "full", "sparse"), f"model.attn_gate must be off, full or sparse, got {m.attn_gate!r}")
    _check(m.loop_lora_rank >= 0, f"model.loop_lora_rank must be non-negative, got {m.loop_lora_rank}")
    _check(m.tie_embeddings or m.embed_rank == 0, f"model.embed_rank = {m.embed_rank} needs model.tie_embeddings = true")
    _check(t.seq_len >= 2, f"train.seq_len must be at least 2, got {t.seq_len}")
    _check(t.batch_tokens > 0 and t.batch_tokens % t.seq_len == 0,
           f"train.batch_tokens {t.batch_tokens} must be a positive multiple of train.seq_len {t.seq_len}")
    micro = t.micro_batch_tokens or t.batch_tokens
    _check(micro % t.seq_len == 0 and t.batch_tokens % micro == 0,
           f"train.micro_batch_tokens {micro} must be a multiple of train.seq_len and divide train.batch_tokens")
    _check(t.data_spans >= 1 and t.batch_tokens % (t.data_spans * t.seq_len) == 0,
           f"train.data_spans {t.data_spans} must cut train.batch_tokens {t.batch_tokens} into spans of whole "
           f"sequences of train.seq_len {t.seq_len}")
    _check(t.iterations >= 0, f"train.iterations must be non-negative, got {t.iterations}")
    _check(t.max_wallclock_seconds >= 0, "train.max_wallclock_seconds must be non-negative")
    _check(t.reserve_seconds >= 0 and (t.max_wallclock_seconds == 0 or t.reserve_seconds < t.max_wallclock_seconds),
           f"train.reserve_seconds {t.reserve_seconds} must be non-negative and below train.max_wallclock_seconds")
    _check(t.val_every >= 0 and t.val_every_seconds >= 0, "train.val_every and train.val_every_seconds must be non-negative")
    _check(t.compile in ("auto", "on", "off"), f"train.compile must be auto, on or off, got {t.compile!r}")
    for key in ("embed_lr", "head_lr", "tied_embed_lr", "matrix_lr", "scalar_lr", "weight_decay", "grad_clip_norm"):
        _check(getattr(t, key) >= 0, f"train.{key} must be non-negative")
    _check(0 <= t.qat_fraction <= 1, f"train.qat_fraction must be in [0, 1], got {t.qat_fraction}")
    _check(2 <= t.qat_bits <= 8, f"train.qat_bits must be 2..8, got {t.qat_bits}")
    _check(t.qat_clip >= 0, f"train.qat_clip must be non-negative, got {t.qat_clip}")
    _check(t.qat_embed_bits == 0 or 2 <= t.qat_embed_bits <= 8, f"train.qat_embed_bits must be 0 (off) or 2..8, got {t.qat_embed_bits}")
    _check(t.qat_embed_clip >= 0, f"train.qat_embed_clip must be non-negative, got {t.qat_embed_clip}")
    _check(t.rate_lambda >= 0, f"train.rate_lambda must be non-negative, got {t.rate_lambda}")
    _check(0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    _check(0 <= t.lr_floor <= 1, f"train.lr_floor must be in [0, 1], got {t.lr_floor}")
    _check(t.muon_ns in MUON_NS, f"train.muon_ns must be one of {', '.join(MUON_NS)}, got {t.muon_ns!r}")
    _check(len(t.seq_len_stages) <= MAX_SEQ_STAGES,
           f"train.seq_len_stages {t.seq_len_stages} has more than {MAX_SEQ_STAGES} lengths before train.seq_len")
    for n in t.seq_len_stages:
        _check(isinstance(n, int) and not isinstance(n, bool) and n >= 2 and t.batch_tokens % (t.data_spans * n) == 0
               and micro % n == 0, f"train.seq_len_stages length {n!r} must be an integer >= 2 that cuts each of the "
               f"train.data_spans {t.data_spans} spans of train.batch_tokens {t.batch_tokens} (and each micro-batch) into whole sequences")
    for rule in module_rules(m, t):
        _check(rule.holds, rule.message)
    for pattern, bits in q.bits.items():
        _check(isinstance(bits, int) and not isinstance(bits, bool) and bits in QUANT_BITS_ALLOWED,
               f"quant.bits[{pattern!r}] = {bits!r}: allowed are {', '.join(map(str, QUANT_BITS_ALLOWED))}")
    for pattern, k in q.clip.items():
        _check(isinstance(k, (int, float)) and not isinstance(k, bool) and k >= 0,
               f"quant.clip[{pattern!r}] = {k!r}: must be a non-negative number (0 = percentile clip)")
    _check(0 < q.clip_percentile <= 100, "quant.clip_percentile must be in (0, 100]")
    format_error = format_table_error(q)  # quantizer, awq, outliers, rank, rank_bits: the axes of pgolf/storage.py
    _check(format_error is None, format_error)
    _check(q.calib_tokens >= 1, f"quant.calib_tokens must be positive, got {q.calib_tokens}")
    _check(0 <= q.gptq_damp <= 1, f"quant.gptq_damp must be in [0, 1], got {q.gptq_damp}")
    _check(q.gptq_block >= 1, f"quant.gptq_block must be positive, got {q.gptq_block}")
    _check(q.compressor in COMPRESSORS, f"quant.compressor must be one of {', '.join(COMPRESSORS)}, got {q.compressor!r}")
    missing = compressor_missing(q.compressor)
    _check(missing is None, f"quant.compressor {missing}")
    _check(q.row_order in ROW_ORDERS, f"quant.row_order must be one of {', '.join(ROW_ORDERS)}, got {q.row_order!r}")
    _check(q.code in CODE_FORMS, f"quant.code must be one of {', '.join(CODE_FORMS)}, got {q.code!r}")
    level_range = range(1, 23) if q.compressor in ("zstd", "rans") else range(0, 12) if q.compressor == "brotli" else range(0, 10)
    _check(q.level in level_range, f"quant.level {q.level} is out of range for {q.compressor}")
    seq = config.eval_seq_len()
    _check(seq >= 2, f"eval.seq_len must be at least 2, got {seq}")
    _check(0 <= e.stride <= seq, f"eval.stride {e.stride} must be between 0 and the eval sequence length {seq}")
    _check(e.batch_tokens >= seq, f"eval.batch_tokens {e.batch_tokens} must hold at least one sequence of {seq}")
    _check(e.repeats >= 0, "eval.repeats must be non-negative")
    _check(m.loop_len > 0 or config.eval_repeats() == 1, "eval.repeats > 1 needs a shared segment (model.loop_len > 0)")
    _check(e.ttt in TTT_MODES, f"eval.ttt must be one of {', '.join(TTT_MODES)}, got {e.ttt!r}")
    if e.ttt != "off":
        _check(bool(e.ttt_targets) and all(isinstance(p, str) and p for p in e.ttt_targets),
               f"eval.ttt_targets must be a non-empty list of name patterns, got {e.ttt_targets!r}")
        _check(e.ttt != "lora" or 1 <= e.ttt_rank <= MAX_TTT_RANK, f"eval.ttt_rank must be in [1, {MAX_TTT_RANK}] with eval.ttt = lora, got {e.ttt_rank}")
        _check(e.ttt_optimizer in TTT_OPTIMIZERS, f"eval.ttt_optimizer must be one of {', '.join(TTT_OPTIMIZERS)}, got {e.ttt_optimizer!r}")
        _check(math.isfinite(e.ttt_lr) and e.ttt_lr >= 0, f"eval.ttt_lr must be a non-negative learning rate, got {e.ttt_lr}")
        _check(e.ttt_steps >= 0, f"eval.ttt_steps must be non-negative, got {e.ttt_steps}")
        _check(1 <= e.ttt_chunk <= seq, f"eval.ttt_chunk {e.ttt_chunk} must be between 1 and the eval sequence length {seq} "
               "(a chunk is scored by windows of that length)")
        _check(e.ttt_reset in TTT_RESETS, f"eval.ttt_reset must be one of {', '.join(TTT_RESETS)}, got {e.ttt_reset!r}")
        _check(e.ttt_phase_tokens >= 0, f"eval.ttt_phase_tokens must be non-negative, got {e.ttt_phase_tokens}")
        _check(e.ttt_phase_tokens == 0 or e.ttt_reset == "never",
               "eval.ttt_phase_tokens needs eval.ttt_reset = never (adapters reset at each document have no later phase)")
        _check(e.ttt_global_tokens >= 0, f"eval.ttt_global_tokens must be non-negative, got {e.ttt_global_tokens}")
        if e.ttt_global_tokens:
            _check(e.ttt_reset == "document", "eval.ttt_global_tokens needs eval.ttt_reset = document (global phases, then per-document adapters)")
            _check(bool(e.ttt_global_targets) and all(isinstance(p, str) and p for p in e.ttt_global_targets),
                   f"eval.ttt_global_targets must be a non-empty list of tensor name patterns, got {e.ttt_global_targets!r}")
            _check(e.ttt_global_steps >= 1, f"eval.ttt_global_steps must be at least 1, got {e.ttt_global_steps}")
    _check(0 <= e.ngram_order <= MAX_NGRAM_ORDER, f"eval.ngram_order must be in [0, {MAX_NGRAM_ORDER}] (0 = off), got {e.ngram_order}")
    if e.ngram_order:
        _check(0.0 <= e.ngram_threshold < 1.0, f"eval.ngram_threshold must be in [0, 1), got {e.ngram_threshold}")
        _check(math.isfinite(e.ngram_boost) and e.ngram_boost >= 0, f"eval.ngram_boost must be a finite non-negative logit boost, got {e.ngram_boost}")

