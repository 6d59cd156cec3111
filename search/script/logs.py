"""A training script's output, parsed line by line as it streams (formats: /work/shared/REFERENCE.md).

- Progress: a line that starts with `step:N/M` (official) or `N/M` (records). With a `val_bpb` it is a
  validation report (step, training seconds, val_bpb) for the pruner; its `train_time` (ms, s or m), else
  the last one seen on a training line, gives the seconds.
- Final score: the last line after training (no progress line follows it) that carries a `val_bpb` and is
  not a progress line; if a line tagged `<its tag>_exact` exists, that one's more precise value. A line's
  tag is the text before its first val_loss/val_bpb field (`final_int8_zlib_roundtrip_exact`,
  `quantized_ttt_phased`, `diagnostic quantized`). A space may name the tag instead: a regular expression
  that must match a tag whole; the last matching line wins, with the same `_exact` preference.
- Training seconds: the `stopping_early` line's train_time, else the last train_time of a progress line or of a
  line without a score (pgolf's own export ends training with `trained steps:N train_time:Xs stopped_by:wallclock`
  and counts calibration in a later `train_time`); `stopped_by:wallclock` there also means stopped early, and its
  `steps:N` gives the step count where no progress line does.
- Evaluation seconds: a `total_eval_time` line, else the final line's (or its non-exact sibling's) eval_time.
- The last `Total submission size ...: N bytes` line, recorded beside pgolf's own measurement.
A records-style validation line has no train_time of its own: it gets the last training line's, which
those scripts print in minutes to one decimal (6 s resolution).
"""

import math
import re
from dataclasses import dataclass, field

from search.script import ScriptError

NUMBER = r"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf(?:inity)?)"
VAL_BPB = re.compile(rf"\bval_bpb\s*[:=]\s*({NUMBER})", re.I)
VAL_LOSS = re.compile(rf"\bval_loss\s*[:=]\s*({NUMBER})", re.I)
FIRST_SCORE_FIELD = re.compile(r"\bval_(?:loss|bpb)\s*[:=]")
STEP = re.compile(r"^\s*(?:step\s*:\s*)?(\d+)/(\d+)(?=\s|$)")
TRAIN_TIME = re.compile(r"\btrain_time\s*[:=]\s*(\d+(?:\.\d*)?)\s*(ms|s|m)\b")
EVAL_TIME = re.compile(r"\beval_time\s*[:=]\s*(\d+(?:\.\d*)?)\s*(ms|s|m)?\b")
TOTAL_EVAL_TIME = re.compile(r"^\s*total_eval_time\s*[:=]\s*(\d+(?:\.\d*)?)\s*(ms|s|m)?\b")
STOPPING = re.compile(r"^\s*stopping_early\b")
STOPPED_BY_WALLCLOCK = re.compile(r"\bstopped_by\s*[:=]\s*wallclock\b")
STEPS = re.compile(r"\bsteps\s*[:=]\s*(\d+)\b")  # pgolf's end-of-training line: its step count
TOTAL_SIZE = re.compile(r"^\s*Total submission size\b[^:]*:\s*(\d+)\s*bytes")
RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")  # torchrun's per-rank prefix, where it adds one
UNIT_SECONDS = {"ms": 1e-3, "s": 1.0, "m": 60.0, None: 1e-3}  # a bare eval_time is in ms, as the scripts print it


@dataclass
class Progress:
    step: int
    train_seconds: float | None
    val_bpb: float


@dataclass
class ScoreLine:
    number: int   # 1-based line number in the log
    tag: str
    val_bpb: float
    val_loss: float | None
    eval_seconds: float | None
    text: str

    @property
    def base_tag(self) -> str:
        word = self.tag.split()[0] if self.tag else ""
        return word[: -len("_exact")] if word.endswith("_exact") else word


@dataclass
class LogSummary:
    final: ScoreLine | None
    train_seconds: float | None
    eval_seconds: float | None
    stopped_early: bool
    reported_total_bytes: int | None
    progress: list[Progress] = field(default_factory=list)
    end_steps: int | None = None  # the step count an end-of-training line states (`trained steps:N`), where one does

    @property
    def steps(self) -> int:
        """Training steps: the last progress line's, else the end-of-training line's, else 0."""
        return self.progress[-1].step if self.progress else (self.end_steps or 0)

    def score(self) -> float:
        """The final val_bpb, or one line saying why there is none to rank."""
        if self.final is None:
            raise ScriptError("the script printed no final score (no val_bpb line after training)")
        if not math.isfinite(self.final.val_bpb):
            raise ScriptError(f"the script's final score is {self.final.val_bpb} (log line {self.final.number}: "
                              f"{self.final.text.strip()[:120]})")
        return self.final.val_bpb


def compile_final_tag(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ScriptError(f"final-line tag {pattern!r} is not a valid regular expression: {exc}") from None


def _seconds(match: re.Match | None) -> float | None:
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)] if match else None


class ScriptLog:
    """Feed it the script's output one line at a time; `feed` returns a validation report when a line is one."""

    def __init__(self, final_tag: str | None = None):
        self.final_tag = compile_final_tag(final_tag)
        self.lines = 0
        self.candidates: list[ScoreLine] = []  # score lines since the last progress line
        self.progress: list[Progress] = []
        self.last_train_seconds: float | None = None
        self.stop_seconds: float | None = None
        self.stopped_by_wallclock = False
        self.end_steps: int | None = None
        self.total_eval_seconds: float | None = None
        self.total_bytes: int | None = None

    def feed(self, line: str) -> Progress | None:
        self.lines += 1
        line = RANK_PREFIX.sub("", line)
        bpb = VAL_BPB.search(line)
        if STEP.match(line):
            self.candidates.clear()  # training goes on: earlier score lines were not final
            seconds = _seconds(TRAIN_TIME.search(line))
            if seconds is not None:
                self.last_train_seconds = seconds
            if bpb:
                report = Progress(int(STEP.match(line).group(1)), self.last_train_seconds, float(bpb.group(1)))
                self.progress.append(report)
                return report
            return None
        if STOPPING.match(line):
            self.stop_seconds = _seconds(TRAIN_TIME.search(line))
        elif TOTAL_EVAL_TIME.match(line):
            self.total_eval_seconds = _seconds(TOTAL_EVAL_TIME.match(line))
        elif (size := TOTAL_SIZE.match(line)) is not None:
            self.total_bytes = int(size.group(1))
        elif bpb:
            loss = VAL_LOSS.search(line)
            tag = line[: FIRST_SCORE_FIELD.search(line).start()].strip()
            self.candidates.append(ScoreLine(self.lines, tag, float(bpb.group(1)), float(loss.group(1)) if loss else None,
                                             _seconds(EVAL_TIME.search(line)), line.rstrip("\n")))
        elif (seconds := _seconds(TRAIN_TIME.search(line))) is not None:
            self.last_train_seconds = seconds  # a script's own end-of-training line
            self.stopped_by_wallclock = self.stopped_by_wallclock or bool(STOPPED_BY_WALLCLOCK.search(line))
            steps = STEPS.search(line)
            self.end_steps = int(steps.group(1)) if steps else self.end_steps
        return None

    def _final(self) -> ScoreLine | None:
        chosen = [c for c in self.candidates if self.final_tag is None or self.final_tag.fullmatch(c.tag)]
        if not chosen:
            return None
        last = chosen[-1]
        siblings = [c for c in self.candidates if c.base_tag == last.base_tag]
        exact = [c for c in siblings if c.tag.split()[0].endswith("_exact")]
        final = exact[-1] if exact else last
        if final.eval_seconds is None:  # the official _exact line has no eval_time; its sibling does
            timed = [c for c in siblings if c.eval_seconds is not None]
            if timed:
                final = ScoreLine(final.number, final.tag, final.val_bpb, final.val_loss, timed[-1].eval_seconds, final.text)
        return final

    def summary(self) -> LogSummary:
        final = self._final()
        train = self.stop_seconds if self.stop_seconds is not None else self.last_train_seconds
        evaluation = self.total_eval_seconds if self.total_eval_seconds is not None else (final.eval_seconds if final else None)
        stopped = self.stop_seconds is not None or self.stopped_by_wallclock
        return LogSummary(final, train, evaluation, stopped, self.total_bytes, list(self.progress), self.end_steps)


def parse_log(text: str, final_tag: str | None = None) -> LogSummary:
    log = ScriptLog(final_tag)
    for line in text.splitlines():
        log.feed(line)
    return log.summary()
