"""The files of an exported submission folder, named once for export, verify and the legality check, and the error
a submission that does not verify raises (verify.py and a script study's check, search/script/export.py)."""

from pgolf.assemble import SCRIPT_FILE
from pgolf.submission import MODEL_FILE

COUNTED_FILES = (SCRIPT_FILE, MODEL_FILE)  # train_gpt.py + final_model.pgolf: the bytes the cap counts
SOURCE_FILE = "pgolf.json"  # where the export came from (study, trial, data) and the exact recorded figures


class VerifyError(ValueError):
    """The submission does not verify; the message says which check failed."""
