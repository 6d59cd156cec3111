"""A candidate allocation made real: packed with each allowed compressor until its exact bytes fit the cap (a
candidate over the cap is never scored), ranked against the others on a validation prefix just long enough to
tell them apart, and the leader reloaded into a fresh model and scored on the whole validation split.
"""

import concurrent.futures
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field

from objectives.constraints import at_submission_ranks
from pgolf.assemble import code_bytes, write_script
from pgolf.bpb import ByteLuts, load_tokenizer
from pgolf.config import QuantConfig, RunConfig, config_to_dict
from pgolf.configfiles import config_to_toml
from pgolf.evaluate import NonFiniteScore, Trace
from pgolf.shards import validation_tokens
from pgolf.storage import TENSOR_AXES, needs_calibration, quantize_state_dict
from pgolf.submission import MODEL_FILE, load_model, pack_stored, score, score_tokens

DIRECTORY_SLACK = 256  # bytes kept free for the model file's directory and frame overheads
STRONGEST_LEVEL = {"lzma": 9, "brotli": 11}  # compressors packed at their strongest level (zstd and rans: the space's)


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
    post_training_seconds: float = 0.0  # collecting H + quantization a submission runs after training (0 for RTN)
    formats: list = field(default_factory=list)  # the formats beyond plain RTN among its picks
    subset_tokens: int = 0  # validation prefix it was ranked on against the other candidates (0: not ranked)
    blob: bytes = field(default=b"", repr=False)
    byte_groups: dict = field(default_factory=dict)
    loaded: tuple | None = field(default=None, repr=False)  # load_model of blob, once (load_back)

    def load_back(self, device) -> tuple:
        """(model, model config, eval config) loaded back from the candidate's bytes, once: ranking, the whole-split
        score and the quantization gap read the same round trip (decoding rans took ~0.65 s of a demo trial a time).
        Scoring leaves a model as it was (TTT's close() restores the weights)."""
        if self.loaded is None:
            self.loaded = load_model(self.blob, device)
        return self.loaded

    def summary(self) -> dict:
        q = self.config.quant
        formats = {a.name: getattr(q, a.name) for a in TENSOR_AXES if getattr(q, a.name) != getattr(QuantConfig(), a.name)}
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
    ttt: list = field(default_factory=list)  # every test-time training setting measured (search/allocation/ttt.py)
    joint: object = None  # the joint choice of the evaluation settings, when the space asks for it (joint.py)

    def record(self) -> dict:
        return {"best": self.best.label if self.best else None, "candidates": [c.summary() for c in self.candidates],
                "sensitivities": self.sensitivities, "seconds": self.seconds, "phases": self.phases,
                "ttt": [{"setting": m.label(), "held_out_loss": m.loss, "seconds": m.seconds,
                         "predicted_eval_seconds": m.predicted_seconds, "stopped_over_cap": m.stopped} for m in self.ttt],
                **({"evaluation_choice": self.joint.record()} if self.joint is not None else {})}


def write_candidate(directory: str, candidate: Candidate) -> None:
    """A candidate's model file, its standalone script and its config, as a run folder holds them."""
    with open(os.path.join(directory, MODEL_FILE), "wb") as f:
        f.write(candidate.blob)
    write_script(directory, config_to_dict(candidate.config))
    with open(os.path.join(directory, "config.toml"), "w", encoding="utf-8") as f:
        f.write(config_to_toml(candidate.config))


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


def pack_candidate(model, candidate: Candidate, space_alloc, hessians=None, hessian_seconds: float = 0.0) -> None:
    """Pack with each allowed compressor (and row order) and keep the smallest model file plus code: the candidate's real bytes.
    A candidate whose formats need the layers' H (hessians: (H, rows) per matrix, collected in hessian_seconds)
    costs a submission that collection and its quantization after training: timed here, it counts against
    the training cap (packing reads no training data and does not count, as in pgolf/submission.py's export)."""
    state = model.state_dict()
    needs_hessians = bool(needs_calibration(state, candidate.config.quant))
    # Quantize once (GPTQ is the costly part); only the packing differs between compressors.
    started = time.perf_counter()
    stored = quantize_state_dict(state, candidate.config.quant, *(hessians if needs_hessians else (None, None)))
    quantize_seconds = time.perf_counter() - started
    def pack_with(choice: tuple) -> tuple:
        compressor, row_order = choice
        level = space_alloc.level if compressor in ("zstd", "rans") else STRONGEST_LEVEL[compressor]  # rans: zstd for the rest
        quant = dataclasses.replace(candidate.config.quant, compressor=compressor, level=level, row_order=row_order)
        trial = dataclasses.replace(candidate.config, quant=quant)
        blob, groups = pack_stored(stored, trial)
        code = code_bytes(config_to_dict(trial))  # a compressor's code counts: rans ships its decoder
        return len(blob) + code, blob, groups, trial, code

    # The compressors side by side: zstd and lzma let go of the GIL while they compress (lzma-9 alone took ~0.9 s of
    # the ~1.7 s a demo candidate took to pack one after another). The same bytes either way; ties keep the first listed.
    # Each row order too (pgolf/row_order.py: "similar" codes no larger, but ships its module's code).
    choices = [(c, o) for c in space_alloc.compressors for o in space_alloc.row_orders or [candidate.config.quant.row_order]]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(choices)) as pool:
        packed = list(pool.map(pack_with, choices))
    _, blob, groups, candidate.config, code = min(packed, key=lambda p: p[0])
    candidate.post_training_seconds = hessian_seconds + quantize_seconds if needs_hessians else 0.0
    candidate.artifact_bytes = len(blob) + code
    candidate.blob, candidate.byte_groups = blob, dict(groups, code=code)


PREFIX_START = 16_384  # validation tokens the first comparison of candidates reads
PREFIX_Z = 3.0  # standard errors the paired per-token loss difference must clear to decide on a prefix


def order_on_prefix(candidates: list, data, runtime) -> list:
    """Packed candidates ordered by their post-roundtrip loss on a validation prefix just long enough to tell the
    first two apart: their paired per-token loss difference must clear PREFIX_Z standard errors (tokens within
    a document are correlated, so the margin is wide), else the prefix grows 4x; a prefix past a quarter of the
    split is the whole split. Each candidate's prefix size goes into its `subset_tokens`."""
    vocab_size = candidates[0].config.model.vocab_size
    luts = ByteLuts(load_tokenizer(data.tokenizer, vocab_size), vocab_size)
    models = [c.load_back(runtime.device) for c in candidates]
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


def score_candidate(candidate: Candidate, caps, data, runtime, train_seconds: float = 0.0) -> None:
    """The packed candidate loaded back into a fresh model and scored on the whole validation split."""
    fresh, _, eval_cfg = candidate.load_back(runtime.device)
    try:
        post = score(fresh, eval_cfg, data.val_pattern, data.tokenizer, runtime)
    except NonFiniteScore as exc:  # fails the trial (or `search allocate`): a candidate without a score is never ranked
        raise NonFiniteScore(f"allocation candidate {candidate.label!r} after its round trip: {exc}") from None
    candidate.val_bpb, candidate.val_loss, candidate.eval_seconds = post.bpb, post.loss, post.seconds
    candidate.feasible = (candidate.artifact_bytes <= caps.artifact_bytes
                          and at_submission_ranks(post.seconds, runtime.world_size, caps) <= caps.eval_seconds
                          and train_seconds + candidate.post_training_seconds <= caps.train_seconds)
