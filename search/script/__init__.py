"""Script mode: a study whose trials run a user's records-style `train_gpt.py`, unmodified.

knobs.py reads which environment variables a script reads (AST, nothing executed); logs.py parses its
output as it streams; defaults.py rewrites its literal defaults for an export.
"""


class ScriptError(ValueError):
    """A script, or a setting for it, that script mode cannot use; the message names the problem in one line."""
