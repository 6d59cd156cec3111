"""The error every `search` command reports in one line: a module-level home so that modules search/study.py imports
(the samplers) can raise it too without an import cycle."""


class StudyError(ValueError):
    """A study that cannot be created, found or opened; the message says which and why."""
