"""Deliberately illegal evaluations, as text patches of the code an exported train_gpt.py is assembled from:
the negative controls of the legality check (tests and bench/legality_exports.py)."""

# Test-time training that adapts on each chunk before scoring it.
ADAPT_THEN_SCORE = (
    """            if not single:
                _score_chunks(scoring, adapters, live, spans, step)
            _train_chunks(scoring, adapters, optimizer, rows, chunks, score_first_step=single)
""",
    """            _train_chunks(scoring, adapters, optimizer, rows, chunks, score_first_step=False)
            _score_chunks(scoring, adapters, live, spans, step)
""")

# Chunked evaluation that leaves the last sequence of the split unscored.
SKIPPED_TAIL = ("    total_seqs = (tokens.numel() - 1) // seq_len\n", "    total_seqs = (tokens.numel() - 1) // seq_len - 1\n")

# Sliding-window evaluation (a stride below the sequence) that drops its last window.
SKIPPED_LAST_WINDOW = ("    windows = window_starts(num_targets, seq_len, stride)\n",
                       "    windows = window_starts(num_targets, seq_len, stride)[:-1]\n")


def patched(source: str, patch: tuple[str, str]) -> str:
    old, new = patch
    if source.count(old) != 1:
        raise AssertionError(f"the code to break has changed: {old.strip()[:60]!r} not found once")
    return source.replace(old, new)

# An n-gram tilt that boosts the token about to be scored (the target itself) at every target.
TILT_WITH_TARGET = ("    confident[t] = confidence > threshold\n", "    pred[t], confident[t] = following, True\n")

# An n-gram tilt whose "latest earlier occurrence" of a context is its next occurrence: it reads text not yet scored.
TILT_FROM_FUTURE = ("    by_context = np.lexsort((t, h))\n", "    by_context = np.lexsort((-t, h))\n")

# Phased global TTT whose global phase adapts on the documents that start at or after the mark, before they are
# scored: their losses then depend on their own later tokens.
GLOBAL_PHASE_ON_UNSCORED = ("if s.start < mark for w in _step_windows((s.start, min(s.end, mark), s.floor)",
                            "if s.start >= mark for w in _step_windows((s.start, s.end, s.floor)")
