"""Script mode: a study whose trials run a user's records-style `train_gpt.py`, unmodified.

knobs.py reads which environment variables a script reads (AST, nothing executed); logs.py parses its
output as it streams; defaults.py rewrites its literal defaults for an export; run.py runs it once.
A study of one (space/script.py reads its space): study.py stages a trial's request, trial.py runs it in the
trial process and writes its metrics as an engine trial does, export.py writes and verifies its records folder.
"""


class ScriptError(ValueError):
    """A script, or a setting for it, that script mode cannot use; the message names the problem in one line."""
