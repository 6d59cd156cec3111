"""Files the tools are handed: recognised by their content, or refused in one line that says what they are.

A user can pass any file anywhere (a shard where a checkpoint goes, a model file where a record goes, an
empty or half-copied file): the loaders name the file and what it holds instead of failing deep inside
a parser with its own words.
"""

import json

from pgolf.artifact import MAGIC
from pgolf.shards import SHARD_MAGIC

ZLIB_HEADERS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")


class FileFormatError(ValueError):
    """A file that is missing, empty or not the kind of file expected; the message names it and what it is."""


def describe(blob: bytes) -> str:
    """What a file's first bytes say it is, for an error message ("an empty file", "a token shard", ...)."""
    if not blob:
        return "an empty file"
    if blob.startswith(MAGIC):
        return "a pgolf model file or checkpoint"
    if blob[:4] == SHARD_MAGIC.to_bytes(4, "little"):
        return "a token shard"
    if blob.startswith(b"PK\x03\x04"):
        return "a zip archive (the torch checkpoint format)"
    if blob[:2] in ZLIB_HEADERS:
        return "zlib-compressed data"
    if blob[:1] == b"\x80":
        return "a pickle"
    head = blob[:4096]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the sample
            return "binary data"
    return "a text file"


def read_json(path: str, what: str) -> dict:
    """The JSON object in `path` (`what` names the file's role, e.g. "run metrics"), or FileFormatError."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        raise FileFormatError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise FileFormatError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not blob.strip():
        raise FileFormatError(f"{what} {path} is empty")
    try:
        data = json.loads(blob)
    except UnicodeDecodeError:
        raise FileFormatError(f"{what} {path} is not JSON: it is {describe(blob)}") from None
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{what} {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FileFormatError(f"{what} {path} holds a JSON {type(data).__name__}, not an object")
    return data
