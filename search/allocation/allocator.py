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
   code bytes and the tensors no unit holds), planned for each allowed compressor (its code bytes, and its
   symbol rate from objectives.bytes's Calibration) and kept for the one whose plan does least damage.
4. evaluation.py, ttt.py: the eval unroll count, the stride, and test-time training under the eval cap, one after
   another; or joint.py ([allocation] eval_choice = "joint"): stride x TTT x n-gram tilt as one choice.
5. candidates.py: the knapsack's picks (and, with confirm_top 2, the best uniform width) packed for real until
   their bytes fit, ranked on a validation prefix, and the leader scored on the whole split: that score is
   the result. The compressor is whichever packs the picks smaller (exact). Every candidate is recorded.
"""

import dataclasses
import functools
from dataclasses import dataclass

from objectives.bytes import load_calibration, rtn_sizes
from pgolf.assemble import code_bytes
from pgolf.config import NGRAM_KEYS, TTT_KEYS, EvalConfig, QuantConfig, RunConfig, config_to_dict
from pgolf.model import GPT
from pgolf.storage import TENSOR_AXES
from pgolf.submission import calibrate as collect_hessians_after_training
from search.allocation.candidates import (DIRECTORY_SLACK, AllocationResult, Candidate, confirm_within_cap, order_on_prefix,
                                          pack_candidate, score_candidate)
from search.allocation.evaluation import EVAL_TIME_MARGIN, choose_repeats, choose_stride, longest_ttt
from search.allocation.knapsack import allocation_quant, best_uniform, fixed_bytes, solve_knapsack
from search.allocation.options import FormatChoices, Option, formatted_options, make_units, unit_options
from search.allocation.sensitivity import heldout_tokens, measure_sensitivities
from search.allocation.joint import choose_jointly
from search.allocation.ttt import choose_ttt
from search.budget.phases import PhaseClock

HESSIAN_PHASE = "calibration"  # the phase collecting the layers' input statistics (its key in allocation.json)


@dataclass
class AllocationRequest:
    """One trained checkpoint to allocate, and what its caller already measured of it."""
    model: GPT
    config: RunConfig
    space: object  # the space's [allocation] table (space.spec.AllocationSpace)
    caps: object  # space.spec.Caps
    data: object  # pgolf.datasets.DataPaths
    runtime: object  # pgolf.submission.setup_runtime's
    seconds_per_token: float | None = None  # measured chunked-eval speed of this model (else measured here)
    # The model's training time, to which a format's post-training work (collecting H, quantizing) is added
    # before checking the training cap (a submission runs that work after training).
    train_seconds: float = 0.0
    sizes: dict | None = None  # a rtn_sizes table of these weights over the space's widths and clips, if measured


@dataclass
class Plan:
    """What the phases before the confirmation decided; every candidate is packed and scored under it."""
    units: list
    options: dict  # unit name -> its options
    rank_bits: int
    hessians: tuple | None  # (H per matrix, input rows per matrix) for the formats that need them
    hessian_seconds: float
    repeats: int
    stride: int
    evaluation: EvalConfig  # the test-time training settings chosen
    compressor: str = "zstd"  # the one the options' bytes and the budget were planned for


def _with(config: RunConfig, quant: QuantConfig | None = None, **eval_changes) -> RunConfig:
    return dataclasses.replace(config, quant=quant or config.quant, eval=dataclasses.replace(config.eval, **eval_changes))


def allocate(request: AllocationRequest, log=print) -> AllocationResult:
    """Choose storage and eval settings for a trained model; see the module docstring. Each phase is timed."""
    clock = PhaseClock()
    model, config, space = request.model, request.config, request.space
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    units = make_units(state, space.granularity)
    choices = FormatChoices.of(space)
    hessians = None
    if choices.extended:
        # The same activations a submission collects after training: its GPTQ/AWQ then reproduce these bytes.
        hessians = collect_hessians_after_training(model, config, request.data.train_pattern, request.runtime.device, names=("*",))
        clock.lap(HESSIAN_PHASE)
    options = _unit_options(request, state, units, choices, hessians)
    clock.lap("options")
    heldout = heldout_tokens(request.data.train_pattern, config.model.vocab_size, space.calib_tokens, config.eval_seq_len())
    sensitivities = measure_sensitivities(model, state, units, options, heldout, config.eval_seq_len(), config.model.loop_repeats,
                                          config.eval.autocast, request.runtime.device, method=space.sensitivity)
    clock.lap("sensitivity")
    how = "estimated (diagonal Fisher)" if space.sensitivity == "fisher" else "measured"
    log(f"allocation: {len(units)} units, sensitivities {how} on {heldout.numel() - 1} held-out training tokens")
    repeats, plain_seconds = choose_repeats(model, config, space, heldout, config.eval.autocast, request.runtime.device)
    compressor, options, budget = _plan_compressor(request, state, units, choices, repeats, options)
    joint = None
    if space.eval_choice == "joint":  # stride x TTT x tilt as one search under the cap
        joint = choose_jointly(model, _with(config, repeats=repeats, stride=0), space, request.caps, request.data, request.runtime,
                               heldout, plain_seconds, EVAL_TIME_MARGIN, log)
        evaluation, stride, measured_ttt = joint.evaluation, joint.evaluation.stride, []
        clock.lap("eval settings")
    else:  # the stride first, then TTT on the time it left
        stride = choose_stride(model, _with(config, repeats=repeats, stride=0), space, request.caps, request.data, request.runtime,
                               request.seconds_per_token)
        clock.lap("eval settings")
        evaluation, measured_ttt = choose_ttt(model, _with(config, repeats=repeats, stride=stride), space, request.caps, request.data,
                                              request.runtime, heldout, EVAL_TIME_MARGIN, log)
        if measured_ttt:
            clock.lap("ttt")
    plan = Plan(units, options, choices.rank_bits, hessians, clock.seconds.get(HESSIAN_PHASE, 0.0), repeats, stride, evaluation,
                compressor)
    result = AllocationResult(best=None, sensitivities=sensitivities, ttt=measured_ttt, joint=joint)
    _confirm(request, plan, _proposals(request, plan, choices), budget, result, log)
    clock.lap("confirm")
    for candidate in result.candidates:  # only the chosen one's loaded model is read again (the quantization gap)
        if candidate is not result.best:
            candidate.loaded = None
    if result.best is not None:
        result.blob, result.byte_groups = result.best.blob, result.best.byte_groups
    result.phases, result.seconds = clock.seconds, sum(clock.seconds.values())
    log("allocation took " + ", ".join(f"{k} {v:.1f}s" for k, v in clock.seconds.items()))
    return result


def _unit_options(request: AllocationRequest, state: dict, units: list, choices: FormatChoices, hessians) -> dict:
    """unit name -> its options: every allowed format measured on its H where the space allows formats beyond
    RTN, else the RTN options from one size table."""
    space = request.space
    if hessians is not None:
        return {u.name: formatted_options(state, u, space.embedding_bits if u.embedding else space.bits, space.clip, choices,
                                          request.config.quant, *hessians) for u in units}
    sizes = request.sizes if request.sizes is not None else rtn_sizes(state, sorted(set(space.bits) | set(space.embedding_bits)),
                                                                       space.clip, [n for u in units for n in u.tensors])
    return {u.name: unit_options(state, u, space.embedding_bits if u.embedding else space.bits, space.clip, sizes) for u in units}


def _plan_compressor(request: AllocationRequest, state: dict, units: list, choices: FormatChoices, repeats: int,
                     options: dict) -> tuple[str, dict, int]:
    """(compressor, the units' options with their bytes at its symbol rate, its budget) of the allowed compressor whose
    knapsack does least damage: each has its own code bytes (rans ships its decoder) and rate. Ties keep the first
    listed, so compressors that differ in neither (zstd, lzma) plan exactly as the first one alone."""
    calibration = load_calibration()
    best = None
    for compressor in request.space.compressors:
        ratio = calibration.compressor_ratio(compressor)
        scaled = options if ratio == 1.0 else {
            name: [o if o.bits == 16 else dataclasses.replace(o, bytes=int(round(o.bytes * ratio))) for o in opts]
            for name, opts in options.items()}
        budget = _model_budget(request, state, units, choices, repeats, compressor)
        picks = solve_knapsack(units, scaled, budget)
        damage = sum(o.damage for o in picks) if picks else float("inf")
        if best is None or damage < best[0]:
            best = (damage, compressor, scaled, budget)
    return best[1:]


def _model_budget(request: AllocationRequest, state: dict, units: list, choices: FormatChoices, repeats: int,
                  compressor: str) -> int:
    """The bytes the units' picks may take under `compressor`: the cap less the code, the directory slack and the
    tensors no unit holds. Code bytes depend (by a few digits) on the allocation written into the script: budget
    with the longest."""
    space, config = request.space, request.config
    widest = Option(16, max(space.clip, key=lambda c: len(repr(float(c)))), 0, 0.0,
                    **{a.name: max(choices.values(a), key=lambda v: len(repr(a.kind(v)))) for a in TENSOR_AXES})
    longest = _with(config, allocation_quant(units, [widest] * len(units), compressor, space.level, config.quant,
                                             choices.rank_bits),
                    repeats=repeats, stride=max(space.eval_stride), **longest_ttt(config, space))
    return request.caps.artifact_bytes - code_bytes(config_to_dict(longest)) - DIRECTORY_SLACK - fixed_bytes(state, units, longest.quant)


def _proposals(request: AllocationRequest, plan: Plan, choices: FormatChoices) -> list:
    """The groups of (label, budget -> picks) confirmed in turn until one yields a feasible candidate: the knapsack
    and the best uniform width, then (where some format needs H) the knapsack over the formats that do not, for
    when collecting H after training would break the training cap."""
    units, options = plan.units, plan.options
    plain = {name: [o for o in opts if o.plain] for name, opts in options.items()}
    proposals = [("knapsack", lambda b: solve_knapsack(units, options, b)),
                 ("best uniform", lambda b: best_uniform(units, plain, b, request.space))]
    fallback = [("knapsack rtn", lambda b: solve_knapsack(units, plain, b))] if choices.needs_hessians else []
    return [proposals[: request.space.confirm_top], fallback]


def _packed(request: AllocationRequest, plan: Plan, label: str, picks: list[Option]) -> Candidate:
    space, config = request.space, request.config
    modes = {k: getattr(plan.evaluation, k) for k in TTT_KEYS + NGRAM_KEYS}  # the chosen TTT and tilt settings
    quant = allocation_quant(plan.units, picks, plan.compressor, space.level, config.quant, plan.rank_bits)
    candidate = Candidate(label, _with(config, quant, repeats=plan.repeats, stride=plan.stride, **modes), sum(o.bytes for o in picks),
                          sum(o.damage for o in picks))
    candidate.formats = sorted({o.format_label() for o in picks if not o.plain})
    pack_candidate(request.model, candidate, space, plan.hessians, plan.hessian_seconds)
    return candidate


def _confirm(request: AllocationRequest, plan: Plan, groups: list, budget: int, result: AllocationResult, log) -> None:
    """Pack each group's candidates for real, and score the leader of those within both caps (the next one should
    its evaluation break the eval cap); the first feasible one is result.best. Every candidate is recorded."""
    caps, data, runtime = request.caps, request.data, request.runtime
    for group in groups:
        if result.best is not None:
            break
        # Packing is cheap and decides the bytes: a candidate over the byte cap is never scored.
        fitting = []
        for label, propose in group:
            candidate = confirm_within_cap(propose, functools.partial(_packed, request, plan, label), budget, caps.artifact_bytes)
            if candidate is None:
                log(f"allocation {label}: nothing allowed fits the byte cap")
                continue
            result.candidates.append(candidate)
            if candidate.artifact_bytes > caps.artifact_bytes:
                log(_report(candidate, plan, caps))
            elif request.train_seconds + candidate.post_training_seconds > caps.train_seconds:
                score_candidate(candidate, caps, data, runtime, request.train_seconds)  # infeasible, but the trial may have nothing better
                log(_report(candidate, plan, caps))
            else:
                fitting.append(candidate)
        # Of those within both caps, the leader on a validation prefix is scored on the whole split.
        while fitting:
            fitting = order_on_prefix(fitting, data, runtime) if len(fitting) > 1 else fitting
            leader = fitting.pop(0)
            score_candidate(leader, caps, data, runtime, request.train_seconds)
            log(_report(leader, plan, caps))
            if leader.feasible:
                result.best = leader
                for other in fitting:
                    log(_report(other, plan, caps))
                break


def _report(candidate: Candidate, plan: Plan, caps) -> str:
    scored = candidate.val_bpb == candidate.val_bpb
    evaluation = plan.evaluation
    return (f"allocation {candidate.label}: {candidate.artifact_bytes:,} bytes, "
            + (f"val_bpb {candidate.val_bpb:.4f}, eval {candidate.eval_seconds:.1f}s " if scored else "")
            + f"(stride {candidate.config.eval.stride}, unroll {plan.repeats}"
            + (f", TTT chunk {evaluation.ttt_chunk} rank {evaluation.ttt_rank}" if evaluation.ttt != "off" else "") + "), "
            + (f"formats {', '.join(candidate.formats)}, " if candidate.formats else "")
            + (f"{candidate.post_training_seconds:.1f}s after training, " if candidate.post_training_seconds else "")
            + (("feasible" if candidate.feasible else "over a cap") if scored else
               "not scored: " + ("over the byte cap" if candidate.artifact_bytes > caps.artifact_bytes else
                                 f"behind the leader on the first {candidate.subset_tokens:,} validation tokens")))
