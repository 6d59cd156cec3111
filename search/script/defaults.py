"""A copy of a script whose defaults are a trial's values: the literal default of each variable the study
set is replaced by the value, written in the literal's own type, at the literal's place in the source
(found through the AST; every other byte unchanged). Variables the script reads without a literal default
(an expression, none) cannot be baked in: they are returned for the README's launch command.
"""

import ast

from search.script import ScriptError
from search.script.knobs import CONVERTERS, check_read, env_value, read_knobs


def _string_literal(text: str, original: str) -> str:
    """`text` as a string literal quoted as the original was where it can be (no prefixes, no escapes needed)."""
    quote = original[:1]
    if quote in ("'", '"') and not original.startswith(quote * 3) and quote not in text and "\\" not in text and text.isprintable():
        return quote + text + quote
    return repr(text)


def _literal_text(literal: ast.expr, original: str, text: str, read_type: str) -> str:
    """The environment string `text` (already checked against the read) as a literal of the original's type."""
    kind = type(ast.literal_eval(literal))
    if kind is str:
        return _string_literal(text, original)
    if kind is bool:
        return repr(text not in ("", "0"))  # env_value wrote a truth as "1" and "0" or ""
    number = float(text)
    if kind is int and number.is_integer() and "." not in text and "e" not in text.lower():
        return str(int(text))
    if kind is int and read_type != "float":
        raise ScriptError(f"value {text} cannot replace the integer default {original}")
    return repr(number)


def rewrite_defaults(source: str, values: dict, path: str = "<script>") -> tuple[str, dict[str, str]]:
    """(the source with each literal default of `values`' variables replaced, {variable: environment string}
    for the variables with no literal default to replace)."""
    script = read_knobs(source, path)
    edits, launch, texts = [], {}, {}
    for name, value in values.items():
        knob = check_read(script, name, "variable")
        text = texts[name] = env_value(knob, value)
        literal_reads = [r for r in knob.reads if r.default_kind == "literal"]
        if len(literal_reads) < len([r for r in knob.reads if r.type != "presence"]) or not literal_reads:
            launch[name] = text  # some read has no literal to carry the value
        for read in literal_reads:
            edits.append((read.literal, _literal_text(read.literal, read.default_source, text, read.type)))
    # AST column offsets count UTF-8 bytes: edit the encoded source, last edit first so offsets stay valid.
    lines = source.encode("utf-8").splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    data = source.encode("utf-8")
    for node, new in sorted(edits, key=lambda e: (e[0].lineno, e[0].col_offset), reverse=True):
        begin = starts[node.lineno - 1] + node.col_offset
        end = starts[node.end_lineno - 1] + node.end_col_offset
        data = data[:begin] + new.encode("utf-8") + data[end:]
    rewritten = data.decode("utf-8")
    _check(rewritten, texts, launch, path)
    return rewritten, launch


def _check(rewritten: str, texts: dict[str, str], launch: dict, path: str) -> None:
    """Each rewritten default, read back from the copy, must be what the script makes of the value when it
    comes through the environment (the same conversions applied to the environment string)."""
    script = read_knobs(rewritten, path + " (rewritten)")
    for name, text in texts.items():
        knob = script.knobs[name]
        if name in launch:
            continue
        expected = text
        for conversion in knob.first.conversions:
            expected = CONVERTERS[conversion](expected)
        if knob.default_value() != expected:
            raise ScriptError(f"{path}: the rewritten default of {name} reads {knob.default_value()!r}, not {expected!r}")
