"""Post-training allocation: how to store and evaluate one trained checkpoint, without retraining.

Chooses per-unit bit-widths and clip multipliers, the eval unroll count, the eval stride and the
compressor to minimise post-roundtrip bpb under the byte cap and the eval-time cap.

The steps, each in a module of its own:
1. options.py: units (the embedding, plus attention/MLP per layer, per kind or per matrix) and each unit's
   options, every allowed storage format with its bytes (the real stored arrays, compressed as
   objectives.bytes estimates them, within ~1.5% of the final compressors) and its error.
2. sensitivity.py: damage per (unit, option), HAWQ-style: the unit's measured sensitivity on held-out
   *training* tokens x the option's error.
3. knapsack.py: one option per unit minimising the summed damage within the byte budget (cap minus exact
   code bytes and the tensors no unit holds).
4. evaluation.py, ttt.py: the eval unroll count, the stride, and test-time training under the eval cap.
5. candidates.py: the knapsack's picks (and, with confirm_top 2, the best uniform width) packed for real until
   their bytes fit, ranked on a validation prefix, and the leader scored on the whole split: that score is
   the result. The compressor is whichever packs the picks smaller (exact). Every candidate is recorded.
"""

import dataclasses
import functools
import time

from objectives.bytes import rtn_sizes
from pgolf.assemble import code_bytes
from pgolf.config import TTT_KEYS, QuantConfig, RunConfig, config_to_dict
from pgolf.model import GPT
from pgolf.storage import TENSOR_AXES
from pgolf.submission import calibrate
from search.allocation.candidates import (DIRECTORY_SLACK, AllocationResult, Candidate, confirm_within_cap, pack_candidate,
                                          rank_on_prefix, score_candidate)
from search.allocation.evaluation import EVAL_TIME_MARGIN, choose_repeats, choose_stride, longest_ttt
from search.allocation.knapsack import allocation_quant, best_uniform, fixed_bytes, solve_knapsack
from search.allocation.options import FormatChoices, Option, formatted_options, make_units, unit_options
from search.allocation.sensitivity import calibration_tokens, measure_sensitivities
from search.allocation.ttt import choose_ttt


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
    calib = calibration_tokens(data.train_pattern, config.model.vocab_size, space_alloc.calib_tokens, config.eval_seq_len())
    sensitivities = measure_sensitivities(model, state, units, options, calib, config.eval_seq_len(), config.model.loop_repeats,
                                          config.eval.autocast, device, method=space_alloc.sensitivity)
    phase["sensitivity"] = time.perf_counter() - started - sum(phase.values())
    how = "estimated (diagonal Fisher)" if space_alloc.sensitivity == "fisher" else "measured"
    log(f"allocation: {len(units)} units, sensitivities {how} on {calib.numel() - 1} held-out training tokens")
    repeats = choose_repeats(model, config, space_alloc, calib, config.eval.autocast, device)

    compressor = space_alloc.compressors[0]
    result = AllocationResult(best=None, sensitivities=sensitivities)
    # Code bytes depend (by a few digits) on the allocation written into the script: budget with the longest.
    widest = Option(16, max(space_alloc.clip, key=lambda c: len(repr(float(c)))), 0, 0.0,
                    **{a.name: max(choices.values(a), key=lambda v: len(repr(a.kind(v)))) for a in TENSOR_AXES})
    longest = _with(config, allocation_quant(units, [widest] * len(units), compressor, space_alloc.level, config.quant, choices.rank_bits),
                    repeats=repeats, stride=max(space_alloc.eval_stride), **longest_ttt(config, space_alloc))
    budget = caps.artifact_bytes - code_bytes(config_to_dict(longest)) - DIRECTORY_SLACK - fixed_bytes(state, units, longest.quant)
    plain = {name: [o for o in opts if o.plain] for name, opts in options.items()}
    proposals = [("knapsack", lambda b: solve_knapsack(units, options, b)),
                 ("best uniform", lambda b: best_uniform(units, plain, b, space_alloc))]
    # The fallback when no confirmed candidate is feasible, e.g. when calibrating after training would
    # break the training cap: the knapsack over the formats that need no calibration.
    fallback = ("knapsack rtn", lambda b: solve_knapsack(units, plain, b)) if choices.calibrated else None
    stride = choose_stride(model, _with(config, repeats=repeats, stride=0), space_alloc, caps, data, runtime, seconds_per_token)
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
        pack_candidate(model, candidate, space_alloc, calibration, calibration_seconds)
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
                score_candidate(candidate, caps, data, runtime, train_seconds)  # infeasible, but the trial may have nothing better
                report(candidate)
            else:
                fitting.append(candidate)
        # Of those within both caps, the leader on a validation prefix is scored on the whole split (and, should
        # its evaluation break the eval cap, the next one).
        while fitting:
            fitting = rank_on_prefix(fitting, data, runtime) if len(fitting) > 1 else fitting
            leader = fitting.pop(0)
            score_candidate(leader, caps, data, runtime, train_seconds)
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
