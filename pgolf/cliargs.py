"""What both command lines (`pgolf`, `search`) check while parsing: numbers in range, paths made absolute.

Every numeric flag is range-checked by its argparse `type`, so a bad value is refused before anything is
created; a parse error is one line (`prog: error: ...`), like every other user error of these tools.
"""

import argparse
import math
import os
import sys


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the problem (no usage block), exit 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)", file=sys.stderr)
        raise SystemExit(2)


def _number(kind, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def ranged(kind, low=None, high=None, above=None):
    """An argparse type: `kind` (int or float) with low <= value <= high, or value > above."""
    what = "an integer" if kind is int else "a number"
    rule = " and ".join(r for r in (f">= {low}" if low is not None else "", f"> {above}" if above is not None else "",
                                    f"<= {high}" if high is not None else "") if r)

    def parse(text: str):
        value = _number(kind, text)
        if (low is not None and value < low) or (high is not None and value > high) or (above is not None and value <= above):
            raise argparse.ArgumentTypeError(f"must be {what} {rule}, got {text}")
        return value

    parse.__name__ = f"{what} {rule}"  # argparse names the type in its own messages
    return parse


COUNT = ranged(int, low=1)  # trials, workers, seeds, ranks, vocab sizes, lengths
INDEX = ranged(int, low=0)  # trial numbers, counts that may be zero
SECONDS = ranged(float, low=0)  # timeouts and caps given in seconds (0 = none / stop now)
POSITIVE = ranged(float, above=0)
SEED = ranged(int, low=0, high=2**32 - 1)  # what numpy's and Optuna's samplers accept


def absolute_paths(args, names: tuple[str, ...]) -> None:
    """Make the path arguments `names` absolute in place: a relative path means the working directory at the
    time it was typed, also for whatever stores it and for every later command that reads it back."""
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, str) and value:
            setattr(args, name, os.path.abspath(os.path.expanduser(value)))
