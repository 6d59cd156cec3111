"""Post-training allocation: how to store and evaluate one trained checkpoint, without retraining.

Chooses per-unit bit-widths and clip multipliers, the eval unroll count, the eval stride and the
compressor to minimise post-roundtrip bpb under the byte cap and the eval-time cap.

1. Units: the embedding, plus attention/MLP per layer (granularity "layer"), per kind ("kind") or each
   matrix ("tensor"). Options: each allowed width x clip multiplier (16 = fp16).
2. Bytes per (unit, option): the real symbols of the real weights and their scales, compressed as
   objectives.bytes estimates them (within ~1.5% of the final compressors).
3. Damage per (unit, option), HAWQ-style: sensitivity x quantization error. Each unit's sensitivity is
   measured once, as the loss increase on held-out *training* tokens when only that unit is quantized at
   the lowest allowed width (never validation tokens: the challenge forbids calibrating on them); its
   damage at other options scales with their weight MSE.
4. A multiple-choice knapsack (exact DP over byte buckets) picks one option per unit, minimising the
   summed damage within the byte budget (cap minus exact code bytes).
5. Eval unroll count: the one with the lowest held-out loss; eval stride: the smallest whose predicted
   eval time fits the cap; test-time training: the allowed setting with the lowest held-out loss whose
   predicted eval time fits (search/ttt_choice.py). Compressor: whichever packs the chosen allocation
   smaller (exact).
6. Confirmation: the knapsack choice (and, with confirm_top 2, the best uniform width) is packed for real
   until its bytes fit the cap (a candidate over the cap is never scored). Candidates within the caps are
   ranked on a validation prefix just long enough to tell them apart (rank_on_prefix), and only the
   leader is reloaded into a fresh model and scored on the whole split: that score is the result.
Every candidate is recorded.
"""

import dataclasses
import functools
import itertools
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from objectives.bytes import RTN_PERCENTILE, compressed_floats, compressed_symbols, rtn_sizes
from pgolf.assemble import assemble_script, code_bytes
from pgolf.config import TTT_KEYS, QuantConfig, RunConfig, config_to_dict
from pgolf.configfiles import config_to_toml
from pgolf.bpb import ByteLuts, load_tokenizer
from pgolf.evaluate import NonFiniteScore, Trace
from pgolf.model import EMBEDDING_PREFIXES, GPT, is_control_tensor
from pgolf.artifact import EXTRA_ROLES, byte_shuffle, pack
from pgolf.quant import StoredTensor, quantize_tensor
from pgolf.storage import (MatrixFormat, attach_correction, factors_from_basis, input_rms, low_rank_basis, needs_calibration,
                           quantize_state_dict, restore_matrix, store_matrix)
from pgolf.shards import TokenStream, token_count, validation_tokens
from pgolf.run import SCRIPT_FILE
from pgolf.submission import MODEL_FILE, calibrate, load_model, model_meta, score, score_tokens
from search.ttt_choice import choose_ttt

PERCENTILE = RTN_PERCENTILE
DIRECTORY_SLACK = 256  # bytes kept free for the model file's directory and frame overheads
EVAL_TIME_MARGIN = 0.7  # predicted eval time must fit in this fraction of the cap (timing noise)
FORMAT_ENTRY_BYTES = 30  # compressed directory bytes of a matrix's format fields, measured on real files
ARRAY_ENTRY_BYTES = 12  # and of each extra array's descriptor


@dataclass
class Unit:
    name: str  # glob pattern over tensor names, as written into the config's quant tables
    tensors: list  # tensor names
    embedding: bool = False


@dataclass
class Option:
    bits: int
    clip: float
    bytes: int
    mse: float  # the unit's error at this option: weight MSE, or with calibration the output error
    damage: float = 0.0
    quantizer: str = "rtn"
    awq: float = 0.0
    outliers: float = 0.0
    rank: int = 0

    @property
    def plain(self) -> bool:
        return self.quantizer == "rtn" and self.awq == 0 and self.outliers == 0 and self.rank == 0

    def format_label(self) -> str:
        """The formats beyond plain RTN, e.g. "gptq+out0.005+r4" ("" when plain)."""
        extras = [self.quantizer] if self.quantizer != "rtn" else []
        extras += [f"awq{self.awq:g}"] * (self.awq > 0) + [f"out{self.outliers:g}"] * (self.outliers > 0) + [f"r{self.rank}"] * (self.rank > 0)
        return "+".join(extras)


@dataclass
class Candidate:
    label: str
    config: RunConfig
    predicted_bytes: int
    predicted_damage: float
    artifact_bytes: int = 0
    val_bpb: float = math.nan
    val_loss: float = math.nan
    eval_seconds: float = math.nan
    feasible: bool = False
    post_training_seconds: float = 0.0  # calibration + quantization a submission runs after training (0 for RTN)
    formats: list = field(default_factory=list)  # the formats beyond plain RTN among its picks
    subset_tokens: int = 0  # validation prefix it was ranked on against the other candidates (0: not ranked)
    blob: bytes = field(default=b"", repr=False)
    byte_groups: dict = field(default_factory=dict)

    def summary(self) -> dict:
        q = self.config.quant
        formats = {k: getattr(q, k) for k in ("quantizer", "awq", "outliers", "rank") if getattr(q, k) != getattr(QuantConfig(), k)}
        return {"label": self.label, "bits": q.bits, "clip": q.clip, **formats, "post_training_seconds": self.post_training_seconds,
                "compressor": self.config.quant.compressor, "eval_repeats": self.config.eval.repeats,
                "eval_stride": self.config.eval.stride, "predicted_bytes": self.predicted_bytes,
                "predicted_damage": self.predicted_damage, "artifact_bytes": self.artifact_bytes,
                # null when not scored (over the byte cap, or behind the leader on a validation prefix)
                **{k: None if math.isnan(v) else v for k, v in (("val_bpb", self.val_bpb), ("val_loss", self.val_loss),
                                                                ("eval_seconds", self.eval_seconds))},
                "feasible": self.feasible, "ranked_on_tokens": self.subset_tokens}


@dataclass
class AllocationResult:
    best: Candidate | None
    candidates: list = field(default_factory=list)
    sensitivities: dict = field(default_factory=dict)
    blob: bytes = b""
    byte_groups: dict = field(default_factory=dict)
    seconds: float = 0.0
    phases: dict = field(default_factory=dict)
    ttt: list = field(default_factory=list)  # every test-time training setting measured (search/ttt_choice.py)

    def record(self) -> dict:
        return {"best": self.best.label if self.best else None, "candidates": [c.summary() for c in self.candidates],
                "sensitivities": self.sensitivities, "seconds": self.seconds, "phases": self.phases,
                "ttt": [{"setting": m.label(), "held_out_loss": m.loss, "seconds": m.seconds,
                         "predicted_eval_seconds": m.predicted_seconds} for m in self.ttt]}


def write_candidate(directory: str, candidate: Candidate) -> None:
    """A candidate's model file, its standalone script and its config, as a run folder holds them."""
    with open(os.path.join(directory, MODEL_FILE), "wb") as f:
        f.write(candidate.blob)
    with open(os.path.join(directory, SCRIPT_FILE), "w", encoding="utf-8") as f:
        f.write(assemble_script(config_to_dict(candidate.config)))
    with open(os.path.join(directory, "config.toml"), "w", encoding="utf-8") as f:
        f.write(config_to_toml(candidate.config))


def make_units(state: dict, granularity: str) -> list[Unit]:
    names = [n for n, t in state.items() if t.ndim == 2 and t.is_floating_point() and not is_control_tensor(n)]
    embedding = [n for n in names if n.startswith(EMBEDDING_PREFIXES)]
    blocks = [n for n in names if n not in embedding]
    units = [Unit(name, [name], embedding=True) for name in embedding]
    if granularity == "tensor":
        return units + [Unit(n, [n]) for n in blocks]
    if granularity == "kind":
        for kind in ("attn", "mlp"):
            members = [n for n in blocks if f".{kind}." in n]
            if members:
                units.append(Unit(f"blocks.*.{kind}.*", members))
        return units
    layers = sorted({int(n.split(".")[1]) for n in blocks})
    for layer in layers:
        for kind in ("attn", "mlp"):
            members = [n for n in blocks if n.startswith(f"blocks.{layer}.{kind}.")]
            if members:
                units.append(Unit(f"blocks.{layer}.{kind}.*", members))
    return units


def rtn_restored(t: torch.Tensor, bits: int, clip: float) -> torch.Tensor:
    """One tensor as an option stores it (bits 16: fp16), back in its own dtype."""
    if bits == 16:
        return t.detach().to(torch.float16).to(t.dtype)
    q, scale = quantize_tensor(t.detach().cpu(), bits, clip, PERCENTILE)
    return (q.float() * scale.float()[:, None]).to(t.dtype)


def unit_options(state: dict, unit: Unit, bits_options, clip_options, sizes: dict | None = None) -> list[Option]:
    """A unit's RTN options from a rtn_sizes table (measured here for its tensors when not given)."""
    sizes = sizes if sizes is not None else rtn_sizes(state, bits_options, clip_options, unit.tensors)
    options = []
    for bits in bits_options:
        for clip in ([0.0] if bits == 16 else clip_options):
            entries = [sizes[(name, bits, clip)] for name in unit.tensors]
            options.append(Option(bits, clip, sum(s + c for s, c, _ in entries), sum(e for _, _, e in entries)))
    return options


@dataclass
class FormatChoices:
    """The matrix formats a study may use beyond plain RTN (the space's [allocation] table)."""
    quantizers: tuple = ("rtn",)
    awq: tuple = (0.0,)
    outliers: tuple = (0.0,)
    ranks: tuple = (0,)
    rank_bits: int = 16

    @classmethod
    def of(cls, space_alloc) -> "FormatChoices":
        return cls(tuple(space_alloc.quantizers), tuple(space_alloc.awq), tuple(space_alloc.outliers), tuple(space_alloc.ranks),
                   space_alloc.rank_bits)

    @property
    def extended(self) -> bool:
        return self != FormatChoices(rank_bits=self.rank_bits)

    @property
    def calibrated(self) -> bool:
        return "gptq" in self.quantizers or any(a > 0 for a in self.awq) or any(r > 0 for r in self.ranks)


def stored_bytes(entry: StoredTensor) -> int:
    """Estimated compressed bytes of one stored matrix, every array it holds (as objectives.bytes does)."""
    total = compressed_symbols(entry.q.tobytes()) + compressed_floats(entry.scale)
    for arr in (entry.col_scale, entry.outlier_values, entry.lr_a_scale, entry.lr_b_scale):
        total += compressed_floats(arr) if arr is not None else 0
    if entry.outlier_gaps is not None:
        total += compressed_symbols(byte_shuffle(entry.outlier_gaps))
    for arr in (entry.lr_a, entry.lr_b):
        if arr is not None:
            total += compressed_symbols(arr.tobytes()) if arr.dtype == np.int8 else compressed_floats(arr)
    extra_arrays = sum(getattr(entry, r) is not None for r in EXTRA_ROLES)
    return total + FORMAT_ENTRY_BYTES * (extra_arrays > 0) + ARRAY_ENTRY_BYTES * extra_arrays


def output_error(delta: torch.Tensor, hessian: torch.Tensor, rows: int) -> float:
    """Mean squared output error ||X delta^T||^2 / rows, with H = X^T X over `rows` input rows."""
    d = delta.double().to(hessian.device)
    return float(torch.einsum("ij,jk,ik->", d, hessian, d)) / max(rows, 1)


def formatted_options(state: dict, unit: Unit, bits_options, clip_options, choices: FormatChoices, quant,
                      hessians: dict, rows: dict) -> list[Option]:
    """Every allowed (bits, clip, quantizer, awq, outliers, rank) of a unit, its bytes and its error:
    output error on the calibration activations where every tensor of the unit has them, else weight MSE.
    Ranks reuse one SVD of each base format's residual."""
    calibrated = all(n in hessians for n in unit.tensors)
    options: dict = {}
    for name in unit.tensors:
        w = state[name].detach().float().cpu()
        H, n = hessians.get(name), rows.get(name, 0)
        weight = input_rms(H, n) if H is not None else None

        def error(delta):
            return output_error(delta, H, n) if calibrated else float(delta.pow(2).sum())

        for bits in bits_options:
            if bits == 16:
                half = w.to(torch.float16)
                _add(options, (16, 0.0, "rtn", 0.0, 0.0, 0), compressed_floats(half.numpy()), error(w - half.float()))
                continue
            for clip, quantizer, awq, outliers in itertools.product(clip_options, choices.quantizers, choices.awq, choices.outliers):
                fmt = MatrixFormat(bits, clip, quantizer, awq, outliers)
                if fmt.needs_calibration() and not calibrated:
                    continue
                entry = StoredTensor(name=name, kind="int", shape=tuple(w.shape), dtype="float32", bits=bits, clip=clip)
                if fmt.is_plain():
                    q, scale = quantize_tensor(w, bits, clip, PERCENTILE)
                    entry.q, entry.scale = q.numpy(), scale.numpy()
                else:
                    store_matrix(entry, w, fmt, PERCENTILE, H, n, (quant.gptq_damp, quant.gptq_block, quant.gptq_act_order))
                residual = w - restore_matrix(entry, torch.float32)
                base_bytes = stored_bytes(entry)
                _add(options, (bits, clip, quantizer, awq, outliers, 0), base_bytes, error(residual))
                ranks = [r for r in choices.ranks if r > 0]
                if ranks and calibrated:
                    basis = low_rank_basis(residual.to(weight.device), weight)
                    for rank in ranks:
                        attach_correction(entry, *factors_from_basis(basis, rank, weight), choices.rank_bits)
                        corrected = w - restore_matrix(entry, torch.float32)
                        _add(options, (bits, clip, quantizer, awq, outliers, rank), stored_bytes(entry), error(corrected))
    return [Option(b, c, size, err, quantizer=qz, awq=a, outliers=o, rank=r) for (b, c, qz, a, o, r), (size, err, count) in options.items()
            if count == len(unit.tensors)]


def _add(options: dict, key: tuple, nbytes: int, err: float) -> None:
    size, total, count = options.get(key, (0, 0.0, 0))
    options[key] = (size + nbytes, total + err, count + 1)


def calibration_tokens(train_pattern: str, vocab_size: int, count: int, seq_len: int) -> torch.Tensor:
    """The last `count` tokens (whole sequences) of the training split: held out from the start of it."""
    stream = TokenStream(train_pattern, vocab_size)
    total = token_count(train_pattern)
    count = min(count, total - 1) // seq_len * seq_len
    stream.take(total - count - 1)
    return stream.take(count + 1)


@torch.no_grad()
def mean_loss(model: GPT, tokens: torch.Tensor, seq_len: int, repeats: int, autocast: bool, device) -> float:
    x = tokens[:-1].reshape(-1, seq_len).to(device)
    y = tokens[1:].reshape(-1, seq_len).to(device)
    total, count = 0.0, 0
    for start in range(0, x.size(0), 64):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(x[start : start + 64], y[start : start + 64], repeats=repeats, reduction="sum")
        total += float(loss)
        count += y[start : start + 64].numel()
    if not math.isfinite(total):  # sensitivities and unroll choice would silently compare NaNs
        raise NonFiniteScore(f"allocation: held-out training loss is {total / count}: the model's outputs are not finite")
    return total / count


def solve_knapsack(units: list[Unit], options: dict, budget: int, buckets: int = 4000) -> list[Option] | None:
    """One option per unit minimising summed damage with summed bytes <= budget (None if nothing fits)."""
    if budget <= 0:
        return None
    unit_bytes = budget / buckets
    best = np.full(buckets + 1, np.inf)
    best[0] = 0.0
    choices = []
    for unit in units:
        nxt = np.full(buckets + 1, np.inf)
        pick = np.full(buckets + 1, -1, dtype=np.int64)
        for i, opt in enumerate(options[unit.name]):
            cost = int(math.ceil(opt.bytes / unit_bytes))  # rounding up keeps the real sum within budget
            if cost > buckets:
                continue
            shifted = np.full(buckets + 1, np.inf)
            shifted[cost:] = best[: buckets + 1 - cost] + opt.damage
            better = shifted < nxt
            nxt[better] = shifted[better]
            pick[better] = i
        choices.append(pick)
        best = nxt
    if not np.isfinite(best).any():
        return None
    b = int(np.argmin(best))
    chosen = []
    for unit, pick in zip(reversed(units), reversed(choices)):
        opt = options[unit.name][pick[b]]
        chosen.append(opt)
        b -= int(math.ceil(opt.bytes / unit_bytes))
    return list(reversed(chosen))


def allocation_quant(units: list[Unit], chosen: list[Option], compressor: str, level: int, base: QuantConfig | None = None,
                     rank_bits: int = 16) -> QuantConfig:
    """The QuantConfig of one pick per unit; the format tables list only units that leave the default, so
    an RTN-only allocation is the same config as before those tables existed."""
    base = base or QuantConfig()
    tables = {"bits": {"*": 8}, "clip": {"*": 0.0}, "quantizer": {"*": "rtn"}, "awq": {"*": 0.0}, "outliers": {"*": 0.0}, "rank": {"*": 0}}
    for unit, opt in zip(units, chosen):
        tables["bits"][unit.name], tables["clip"][unit.name] = opt.bits, opt.clip
        for key, value in (("quantizer", opt.quantizer), ("awq", opt.awq), ("outliers", opt.outliers), ("rank", opt.rank)):
            if value != tables[key]["*"]:
                tables[key][unit.name] = value
    calibration = {k: getattr(base, k) for k in ("calib_tokens", "gptq_damp", "gptq_block", "gptq_act_order")}
    return QuantConfig(**tables, keep_float_max_numel=0, compressor=compressor, level=level, **calibration,
                       rank_bits=rank_bits if any(o.rank for o in chosen) else QuantConfig.rank_bits)


def _with(config: RunConfig, quant: QuantConfig | None = None, **eval_changes) -> RunConfig:
    return dataclasses.replace(config, quant=quant or config.quant, eval=dataclasses.replace(config.eval, **eval_changes))


def allocate(model: GPT, config: RunConfig, space_alloc, caps, data, runtime, log=print,
             seconds_per_token: float | None = None, train_seconds: float = 0.0, sizes: dict | None = None) -> AllocationResult:
    """Choose storage and eval settings for a trained model; see the module docstring.

    seconds_per_token: measured chunked-eval speed of this model, if the caller has one (else measured).
    train_seconds: the model's training time, to which a format's calibration and quantization are added
    (a submission runs them after training) before checking the training cap.
    sizes: a rtn_sizes table of these weights over the space's widths and clips, if the caller measured one.
    """
    started = time.perf_counter()
    device = runtime.device
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    units = make_units(state, space_alloc.granularity)
    choices = FormatChoices.of(space_alloc)
    phase, calibration, calibration_seconds = {}, None, 0.0
    if choices.extended:
        # The same activations a submission collects after training: its GPTQ/AWQ then reproduce these bytes.
        calibration = calibrate(model, config, data.train_pattern, device, names=("*",))
        calibration_seconds = phase["calibration"] = time.perf_counter() - started
        options = {u.name: formatted_options(state, u, space_alloc.embedding_bits if u.embedding else space_alloc.bits,
                                             space_alloc.clip, choices, config.quant, *calibration) for u in units}
    else:
        sizes = sizes if sizes is not None else rtn_sizes(state, sorted(set(space_alloc.bits) | set(space_alloc.embedding_bits)),
                                                          space_alloc.clip, [n for u in units for n in u.tensors])
        options = {u.name: unit_options(state, u, space_alloc.embedding_bits if u.embedding else space_alloc.bits,
                                        space_alloc.clip, sizes) for u in units}
    phase["options"] = time.perf_counter() - started - sum(phase.values())
    seq_len = config.eval_seq_len()
    calib = calibration_tokens(data.train_pattern, config.model.vocab_size, space_alloc.calib_tokens, seq_len)
    repeats_train = config.model.loop_repeats
    autocast = config.eval.autocast
    base_loss = mean_loss(model, calib, seq_len, repeats_train, autocast, device)

    # Sensitivity: damage of each unit alone at its cheapest option, per unit of weight MSE.
    params = dict(model.named_parameters())
    sensitivities = {}
    for unit in units:
        reference = min((o for o in options[unit.name] if o.bits != 16 and o.plain), key=lambda o: (o.bits, o.mse), default=None)
        if reference is None or reference.mse == 0:
            sensitivities[unit.name] = 0.0
            continue
        with torch.no_grad():
            for name in unit.tensors:
                params[name].copy_(rtn_restored(state[name], reference.bits, reference.clip))
            damage = mean_loss(model, calib, seq_len, repeats_train, autocast, device) - base_loss
            for name in unit.tensors:
                params[name].copy_(state[name])
        sensitivities[unit.name] = max(damage, 0.0) / reference.mse
        for opt in options[unit.name]:
            opt.damage = sensitivities[unit.name] * opt.mse
    phase["sensitivity"] = time.perf_counter() - started - sum(phase.values())
    log(f"allocation: {len(units)} units, sensitivities measured on {calib.numel() - 1} held-out training tokens")

    # Eval unroll count: lowest held-out loss of the float model (cheap; quantization shifts all alike).
    repeat_options = space_alloc.eval_repeats if config.model.loop_len > 0 and space_alloc.eval_repeats else [config.eval_repeats()]
    repeat_loss = {r: mean_loss(model, calib, seq_len, r, autocast, device) for r in repeat_options}
    repeats = min(repeat_loss, key=repeat_loss.get)

    compressor = space_alloc.compressors[0]
    result = AllocationResult(best=None, sensitivities=sensitivities)
    # Code bytes depend (by a few digits) on the allocation written into the script: budget with the longest.
    widest = Option(16, max(space_alloc.clip, key=lambda c: len(repr(float(c)))), 0, 0.0, quantizer=max(choices.quantizers, key=len),
                    awq=max(choices.awq, key=lambda a: len(repr(float(a)))), outliers=max(choices.outliers, key=lambda o: len(repr(float(o)))),
                    rank=max(choices.ranks))
    longest = _with(config, allocation_quant(units, [widest] * len(units), compressor, space_alloc.level, config.quant, choices.rank_bits),
                    repeats=repeats, stride=max(space_alloc.eval_stride), **_longest_ttt(config, space_alloc))
    budget = caps.artifact_bytes - code_bytes(config_to_dict(longest)) - DIRECTORY_SLACK - fixed_bytes(state, units, longest.quant)
    plain = {name: [o for o in opts if o.plain] for name, opts in options.items()}
    proposals = [("knapsack", lambda b: solve_knapsack(units, options, b)),
                 ("best uniform", lambda b: best_uniform(units, plain, b, space_alloc))]
    # The fallback when no confirmed candidate is feasible, e.g. when calibrating after training would
    # break the training cap: the knapsack over the formats that need no calibration.
    fallback = ("knapsack rtn", lambda b: solve_knapsack(units, plain, b)) if choices.calibrated else None
    stride = _choose_stride(model, _with(config, repeats=repeats, stride=0), space_alloc, caps, data, runtime, seconds_per_token)
    phase["eval settings"] = time.perf_counter() - started - sum(phase.values())
    evaluation, result.ttt = choose_ttt(model, _with(config, repeats=repeats, stride=stride), space_alloc, caps, data, runtime,
                                        calib, EVAL_TIME_MARGIN, log)
    ttt = {k: getattr(evaluation, k) for k in TTT_KEYS}
    if result.ttt:
        phase["ttt"] = time.perf_counter() - started - sum(phase.values())

    def packed(label: str, picks: list[Option]) -> Candidate:
        quant = allocation_quant(units, picks, space_alloc.compressors[0], space_alloc.level, config.quant, choices.rank_bits)
        candidate = Candidate(label, _with(config, quant, repeats=repeats, stride=stride, **ttt), sum(o.bytes for o in picks),
                              sum(o.damage for o in picks))
        candidate.formats = sorted({o.format_label() for o in picks if not o.plain})
        _pack(model, candidate, space_alloc, calibration, calibration_seconds)
        return candidate

    def report(candidate: Candidate) -> None:
        scored = candidate.val_bpb == candidate.val_bpb
        log(f"allocation {candidate.label}: {candidate.artifact_bytes:,} bytes, "
            + (f"val_bpb {candidate.val_bpb:.4f}, eval {candidate.eval_seconds:.1f}s " if scored else "")
            + f"(stride {candidate.config.eval.stride}, unroll {repeats}"
            + (f", TTT chunk {evaluation.ttt_chunk} rank {evaluation.ttt_rank}" if evaluation.ttt != "off" else "") + "), "
            + (f"formats {', '.join(candidate.formats)}, " if candidate.formats else "")
            + (f"{candidate.post_training_seconds:.1f}s after training, " if candidate.post_training_seconds else "")
            + (("feasible" if candidate.feasible else "over a cap") if scored else
               "not scored: " + ("over the byte cap" if candidate.artifact_bytes > caps.artifact_bytes else
                                 f"behind the leader on the first {candidate.subset_tokens:,} validation tokens")))

    for group in (proposals[: space_alloc.confirm_top], [fallback] if fallback else []):
        if result.best is not None:
            break
        # Packing is cheap and decides the bytes: a candidate over the byte cap is never scored.
        fitting = []
        for label, propose in group:
            candidate = confirm_within_cap(propose, functools.partial(packed, label), budget, caps.artifact_bytes)
            if candidate is None:
                log(f"allocation {label}: nothing allowed fits the byte cap")
                continue
            result.candidates.append(candidate)
            if candidate.artifact_bytes > caps.artifact_bytes:
                report(candidate)
            elif train_seconds + candidate.post_training_seconds > caps.train_seconds:
                _score(candidate, caps, data, runtime, train_seconds)  # infeasible, but the trial may have nothing better
                report(candidate)
            else:
                fitting.append(candidate)
        # Of those within both caps, the leader on a validation prefix is scored on the whole split (and, should
        # its evaluation break the eval cap, the next one).
        while fitting:
            fitting = rank_on_prefix(fitting, data, runtime) if len(fitting) > 1 else fitting
            leader = fitting.pop(0)
            _score(leader, caps, data, runtime, train_seconds)
            report(leader)
            if leader.feasible:
                result.best = leader
                for other in fitting:
                    report(other)
                break
    if result.best is not None:
        result.blob, result.byte_groups = result.best.blob, result.best.byte_groups
    result.seconds = time.perf_counter() - started
    phase["confirm"] = result.seconds - sum(phase.values())
    result.phases = phase
    log("allocation took " + ", ".join(f"{k} {v:.1f}s" for k, v in phase.items()))
    return result


def fixed_bytes(state: dict, units: list[Unit], quant: QuantConfig) -> int:
    """Estimated bytes of the tensors no unit holds (control tensors, vectors): the same whatever the picks,
    so the knapsack's budget leaves room for them (else its first picks overshoot the cap by that much)."""
    held = {n for u in units for n in u.tensors}
    rest = quantize_state_dict({k: v for k, v in state.items() if k not in held}, quant)
    return sum(stored_bytes(e) if e.kind == "int" else compressed_floats(e.data) for e in rest)


def best_uniform(units, options, budget, space_alloc) -> list[Option] | None:
    """The hand-tuning baseline the knapsack must beat: one width and one clip multiplier for every
    matrix (the embedding at that width, or the nearest wider one it allows), the least damaging
    such setting that fits the budget."""
    best, best_damage = None, math.inf
    for bits in sorted(set(space_alloc.bits)):
        for clip in ([0.0] if bits == 16 else space_alloc.clip):
            picks = []
            for unit in units:
                widths = sorted({o.bits for o in options[unit.name]})
                width = bits if bits in widths else next((w for w in widths if w >= bits), widths[-1])
                same = [o for o in options[unit.name] if o.bits == width]
                picks.append(next((o for o in same if o.clip == clip), min(same, key=lambda o: o.mse)))
            damage = sum(o.damage for o in picks)
            if sum(o.bytes for o in picks) <= budget and damage < best_damage:
                best, best_damage = picks, damage
    return best


def _choose_stride(model, config, space_alloc, caps, data, runtime, seconds_per_token=None) -> int:
    """The smallest allowed stride whose predicted full-validation eval time fits the cap (0 = chunks)."""
    strides = sorted(set(space_alloc.eval_stride), key=lambda s: s if s > 0 else 10**9)
    if strides == [0]:
        return 0
    if seconds_per_token is None:
        sample = score(model, config.resolved_eval(), data.val_pattern, data.tokenizer, runtime, limit=65_536)
        seconds_per_token = sample.seconds / max(sample.tokens, 1)
    # The unroll count scales the per-token cost with the number of blocks run.
    seconds_per_token *= _blocks_run(config, config.eval_repeats()) / _blocks_run(config, config.model.loop_repeats)
    full_tokens = token_count(data.val_pattern)
    for stride in strides:
        windows = 1.0 if stride == 0 else config.eval_seq_len() / stride
        if seconds_per_token * full_tokens * windows <= EVAL_TIME_MARGIN * caps.eval_seconds:
            return stride
    return 0


def _longest_ttt(config, space_alloc) -> dict:
    """The TTT setting whose script is longest (the module is in, the widest numbers written), for the code budget."""
    if not space_alloc.ttt_chunk:
        return {}
    return {"ttt": config.eval.ttt if config.eval.ttt != "off" else "lora", "ttt_chunk": max(space_alloc.ttt_chunk),
            "ttt_rank": max(space_alloc.ttt_rank)}


def _blocks_run(config, repeats: int) -> int:
    m = config.model
    return m.num_layers + m.loop_len * (repeats - 1) + 1  # +1: the output layer, about one block's cost


def confirm_within_cap(propose, pack, budget: int, cap: int, attempts: int = 3) -> Candidate | None:
    """propose(budget) -> picks (None if nothing fits); pack(picks) -> Candidate packed for real (bytes known).

    While the real bytes overshoot the cap, propose again. The new budget sits below the last picks' own
    estimate by the measured overshoot: those picks may have been estimated well below the old budget, so
    lowering the old budget alone can return the very same picks.
    """
    candidate = None
    for _ in range(attempts):
        picks = propose(budget)
        if picks is None:
            return candidate
        candidate = pack(picks)
        overshoot = candidate.artifact_bytes - cap
        if overshoot <= 0:
            return candidate
        budget = min(budget, candidate.predicted_bytes) - overshoot - DIRECTORY_SLACK
    return candidate


def _pack(model, candidate: Candidate, space_alloc, calibration=None, calibration_seconds: float = 0.0) -> None:
    """Pack with each allowed compressor and keep the smallest: the candidate's real bytes.
    A candidate whose formats need calibration costs a submission that calibration and its quantization
    after training: timed here, it counts against the training cap."""
    packed = []
    state = model.state_dict()
    calibrated = bool(needs_calibration(state, candidate.config.quant))
    # Quantize once (GPTQ is the costly part); only the packing differs between compressors.
    started = time.perf_counter()
    stored = quantize_state_dict(state, candidate.config.quant, *(calibration if calibrated else (None, None)))
    quantize_seconds = time.perf_counter() - started
    for compressor in space_alloc.compressors:
        level = space_alloc.level if compressor == "zstd" else 9
        trial = dataclasses.replace(candidate.config, quant=dataclasses.replace(candidate.config.quant, compressor=compressor, level=level))
        started = time.perf_counter()
        blob, groups = pack(stored, model_meta(trial), compressor, level)
        packed.append((len(blob), blob, groups, trial, quantize_seconds + time.perf_counter() - started))
    _, blob, groups, candidate.config, export_seconds = min(packed, key=lambda p: p[0])
    candidate.post_training_seconds = calibration_seconds + export_seconds if calibrated else 0.0
    code = code_bytes(config_to_dict(candidate.config))
    candidate.artifact_bytes = len(blob) + code
    candidate.blob, candidate.byte_groups = blob, dict(groups, code=code)


PREFIX_START = 16_384  # validation tokens the first comparison of candidates reads
PREFIX_Z = 3.0  # standard errors the paired per-token loss difference must clear to decide on a prefix


def rank_on_prefix(candidates: list, data, runtime) -> list:
    """Packed candidates ordered by their post-roundtrip loss on a validation prefix just long enough to tell the
    first two apart: their paired per-token loss difference must clear PREFIX_Z standard errors (tokens within
    a document are correlated, so the margin is wide), else the prefix grows 4x; a prefix past a quarter of the
    split is the whole split. Each candidate's prefix size goes into its `subset_tokens`."""
    vocab_size = candidates[0].config.model.vocab_size
    luts = ByteLuts(load_tokenizer(data.tokenizer, vocab_size), vocab_size)
    models = [load_model(c.blob, runtime.device) for c in candidates]
    seq_len = models[0][2].seq_len
    whole = validation_tokens(data.val_pattern, seq_len, vocab_size)  # read once: each prefix is a slice of it
    split = whole.numel() - 1
    limit = PREFIX_START
    while True:
        limit = 0 if limit > split // 4 else limit
        tokens = whole if limit == 0 else whole[: max(limit // seq_len, 1) * seq_len + 1]  # whole sequences, +1 target
        losses = []
        for model, _, eval_cfg in models:
            trace = Trace(tokens.numel() - 1)
            score_tokens(model, eval_cfg, tokens, luts, runtime, trace)
            losses.append(trace.nll[trace.count > 0])
        order = sorted(range(len(candidates)), key=lambda i: float(losses[i].mean()))
        diff = losses[order[1]] - losses[order[0]]
        if limit == 0 or float(diff.mean()) > PREFIX_Z * float(diff.std()) / math.sqrt(diff.numel()):
            for c in candidates:
                c.subset_tokens = tokens.numel() - 1
            return [candidates[i] for i in order]
        limit *= 4


def _score(candidate: Candidate, caps, data, runtime, train_seconds: float = 0.0) -> None:
    """Reload the packed candidate into a fresh model and score it on the whole validation split."""
    fresh, _, eval_cfg = load_model(candidate.blob, runtime.device)
    try:
        post = score(fresh, eval_cfg, data.val_pattern, data.tokenizer, runtime)
    except NonFiniteScore as exc:  # fails the trial (or `search allocate`): a candidate without a score is never ranked
        raise NonFiniteScore(f"allocation candidate {candidate.label!r} after its round trip: {exc}") from None
    candidate.val_bpb, candidate.val_loss, candidate.eval_seconds = post.bpb, post.loss, post.seconds
    candidate.feasible = (candidate.artifact_bytes <= caps.artifact_bytes and post.seconds <= caps.eval_seconds
                          and train_seconds + candidate.post_training_seconds <= caps.train_seconds)
