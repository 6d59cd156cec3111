"""`search verify --legality DIR`: the reviewers' four conditions (REFERENCE.md C1-C4), measured on the
export's own evaluation path: its train_gpt.py, run in probe mode (PROBE_DIR) without network, scores token
streams built here from the start of the validation split, each from the model file afresh.

    C1 causal         tokens from position p on replaced by random ones: every loss of a target before p is
                      unchanged (p at random places; with the n-gram tilt on, the probe's text repeats itself and
                      one p lies in its first copy, so a tilt reading later text is caught; with phased global TTT
                      on, the probe is the split's first ttt_global_tokens tokens and then a document that starts
                      at that mark, with one p inside it, so a global phase that adapted on text it had not
                      scored yet is caught)
    C2 normalised     at sampled targets, the whole distribution the score was taken from sums to 1, gives the
                      scored token its recorded loss, and gives other tokens the loss they get when the stream
                      really continues with them
    C3 score first    as C1, with p inside the adaptation chunks: a model that adapts on a chunk before scoring
                      it lets the chunk's later tokens change its earlier losses
    C4 once           on the whole validation split (as the official loader truncates it to whole evaluation
                      sequences), every target is scored exactly once, the tail included
Losses are compared within `tolerance` nats (bf16 kernels may round a row differently in a batch of another
shape); the largest difference is printed either way.
"""

import os
import tempfile
from dataclasses import dataclass

import numpy as np

from pgolf.artifact import unpack
from pgolf.config import EvalConfig, ModelConfig
from pgolf.shards import validation_tokens
from search.submit.files import MODEL_FILE
from search.submit.verify import VerifyError, export_data, run_eval_only


@dataclass
class Condition:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{self.name}: {'pass' if self.passed else 'FAIL'} ({self.detail})"


def model_file_settings(folder: str) -> tuple[ModelConfig, EvalConfig]:
    """The model and eval settings an export's model file records: what its script evaluates with."""
    with open(os.path.join(folder, MODEL_FILE), "rb") as f:
        meta, _ = unpack(f.read())
    try:
        return ModelConfig(**meta["model"]), EvalConfig(**meta["eval"])
    except (KeyError, TypeError) as exc:
        raise VerifyError(f"{MODEL_FILE} has malformed settings ({exc})") from None


def _chunk(evaluation: EvalConfig) -> int:
    """The span the evaluation may adapt on at once: the TTT chunk, else one scoring step."""
    if evaluation.ttt != "off":
        return evaluation.ttt_chunk
    return evaluation.stride if 0 < evaluation.stride < evaluation.seq_len else evaluation.seq_len


def global_mark(evaluation: EvalConfig) -> int:
    """Where phased global TTT's prefix ends (0: no global phase)."""
    return evaluation.ttt_global_tokens if evaluation.ttt != "off" else 0


def probe_text(split: np.ndarray, evaluation: EvalConfig, length: int, bos_id: int) -> np.ndarray:
    """The probe's base stream: the split's first `length` tokens. With the n-gram tilt on, its text repeats itself
    (a tilt's contexts recur). With phased global TTT on, the split's first ttt_global_tokens tokens come first, then
    `length` tokens of the first document that starts at or after them: it starts at the mark, so it is scored on
    weights the global phase adapted."""
    mark = global_mark(evaluation)
    head, text = split[:mark], split[:length]
    if mark:
        starts = np.flatnonzero(split[mark:] == bos_id)
        if not starts.size or mark + int(starts[0]) + length > split.size:
            raise VerifyError(f"the validation split holds no document of {length:,} tokens after its first {mark:,} "
                              f"(eval.ttt_global_tokens): the probe needs one")
        text = split[mark + int(starts[0]) :][:length]
    text = text.astype(np.int32)
    if evaluation.ngram_order:
        text = np.concatenate([text[: length // 2], text[: length - length // 2]])
    return np.concatenate([head.astype(np.int32), text])


def probe_streams(base: np.ndarray, model: ModelConfig, evaluation: EvalConfig, rng: np.random.Generator):
    """(streams, what each is for, positions whose distribution is recorded) for one probe run."""
    n, chunk, mark = base.size, _chunk(evaluation), global_mark(evaluation)
    alphabet = np.array([t for t in range(model.vocab_size) if t != model.bos_id])  # no new documents: same batching

    def perturbed(p: int) -> np.ndarray:
        stream = base.copy()
        stream[p:] = rng.choice(alphabet, n - p)
        return stream

    causal = sorted(int(p) for p in rng.integers(2, n - 1, 3))
    if evaluation.ngram_order:  # inside the first copy of the repeated text (probe_text)
        causal = sorted(set(causal) | {mark + (n - mark) // 4})
    if mark:  # inside the document scored after the global phase (probe_text)
        causal = sorted(set(causal) | {mark + (n - mark) // 2})
    inside = sorted({min(p, n - 2) for p in (chunk // 2 + 1, chunk + chunk // 2, 2 * chunk + 1)} - {0, 1})
    positions = sorted({min(chunk + chunk // 3, n - 2), int(rng.integers(1, n - 2))})
    streams, roles = [base], [("base", 0, 0)]
    for kind, points in (("C1", causal), ("C3", inside)):
        for p in points:
            streams.append(perturbed(p))
            roles.append((kind, p, 0))
    for t in positions:
        others = rng.choice([v for v in range(model.vocab_size) if v != base[t + 1]], 4, replace=False)
        for v in others:
            stream = base.copy()
            stream[t + 1] = v
            streams.append(stream)
            roles.append(("C2", t, int(v)))
    return streams, roles, positions


def check_legality(folder: str, data_root: str | None = None, device: str | None = None, tolerance: float = 1e-4,
                   seed: int = 0) -> list[Condition]:
    data = export_data(folder, data_root)
    model, evaluation = model_file_settings(folder)
    seq, chunk = evaluation.seq_len, _chunk(evaluation)
    split = validation_tokens(data.val_pattern, seq, model.vocab_size).numpy()
    length = seq * -(-max(2 * seq, 4 * chunk) // seq) + 1  # whole evaluation sequences, a few chunks
    if split.size < length:
        raise VerifyError(f"the validation split holds {split.size:,} tokens, fewer than the probe's {length:,}")
    base = probe_text(split, evaluation, length, model.bos_id)
    streams, roles, positions = probe_streams(base, model, evaluation, np.random.default_rng(seed))
    with tempfile.TemporaryDirectory(prefix="pgolf-legality-") as probe:
        np.savez(os.path.join(probe, "streams.npz"), tokens=np.concatenate(streams), lengths=np.array([s.size for s in streams]),
                 positions=np.array(positions, dtype=np.int64))
        run_eval_only(folder, data, device, env={"PROBE_DIR": probe}, task="run the legality probe")
        try:
            nll = np.load(os.path.join(probe, "nll.npy"), allow_pickle=False).reshape(len(streams), base.size - 1)
            dist = np.load(os.path.join(probe, "dist.npy"), allow_pickle=False)
            counts = np.load(os.path.join(probe, "counts.npy"), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise VerifyError(f"train_gpt.py's legality probe wrote no usable result ({exc})") from None
    return [_causal("C1 causal", nll, roles, "C1", tolerance, "random places"),
            _normalised(nll, dist, roles, positions, base, tolerance),
            _causal("C3 score before update", nll, roles, "C3", tolerance, f"inside chunks of {chunk}"),
            _once(counts, split.size - 1)]


def _causal(name: str, nll: np.ndarray, roles: list, kind: str, tolerance: float, where: str) -> Condition:
    worst, at, moved = 0.0, None, False
    for row, (role, p, _) in enumerate(roles):
        if role != kind:
            continue
        before = slice(0, p - 1)  # targets t < p - 1 read and predict only tokens before p
        # Which earlier targets are scored must not depend on later tokens either; that some are never scored
        # at all is C4's finding, not this one's.
        moved |= bool((np.isnan(nll[0, before]) != np.isnan(nll[row, before])).any())
        both = ~(np.isnan(nll[0, before]) | np.isnan(nll[row, before]))
        diff = float(np.abs(nll[row, before][both] - nll[0, before][both]).max()) if both.any() else 0.0
        if diff > worst:
            worst, at = diff, p
    points = [p for role, p, _ in roles if role == kind]
    passed = worst <= tolerance and not moved
    detail = (f"tokens from p on replaced, p in {points} ({where}): largest change of an earlier loss {worst:.2e} nats"
              + (f" at p = {at}" if at is not None and not passed else "")
              + (", and which earlier targets are scored changed with them" if moved else ""))
    return Condition(name, passed, detail)


def _normalised(nll: np.ndarray, dist: np.ndarray, roles: list, positions: list, base: np.ndarray, tolerance: float) -> Condition:
    if dist.shape[0] != len(positions) or np.isnan(dist).any():
        return Condition("C2 normalised", False, f"no whole distribution recorded at targets {positions}")
    mass = np.exp(-dist).sum(axis=1)
    own = max(abs(dist[i, base[t + 1]] - nll[0, t]) for i, t in enumerate(positions))
    other = max((abs(nll[row, t] - dist[positions.index(t), v]) for row, (role, t, v) in enumerate(roles) if role == "C2"), default=0.0)
    worst_mass = float(np.abs(mass - 1).max())
    passed = worst_mass <= 1e-3 and own <= tolerance and other <= tolerance
    return Condition("C2 normalised", passed, f"at targets {positions}: probabilities sum to {', '.join(f'{m:.6f}' for m in mass)}; "
                     f"scored loss vs distribution {own:.2e}, other continuations vs distribution {other:.2e} nats")


def _once(counts: np.ndarray, targets: int) -> Condition:
    if counts.size != targets:
        return Condition("C4 scored once", False, f"the probe counted {counts.size:,} targets, the split has {targets:,}")
    unscored, repeated = int((counts == 0).sum()), int((counts > 1).sum())
    detail = f"{targets:,} targets of the validation split: {unscored:,} unscored, {repeated:,} scored more than once"
    if unscored:
        detail += f" (first unscored: target {int(np.argmax(counts == 0)):,})"
    return Condition("C4 scored once", unscored == 0 and repeated == 0, detail)
