"""The environment variables a training script reads, found in its source (AST; nothing is executed).

A read is `os.environ.get("X", default)`, `os.environ["X"]`, `os.environ.setdefault("X", default)`,
`os.getenv("X", default)`, `"X" in os.environ`, with any import spelling (`from os import environ, getenv`,
`import os as o`), optionally inside conversions such as `int(...)`, `float(...)`, `bool(int(...))`, `str(...)`.
The outermost conversion gives the variable's type; without one, the literal default's type does (else str).
A variable read several times is one knob with every read kept, so an export can rewrite each literal default.
"""

import ast
import difflib
import math
from dataclasses import dataclass, field

from search.script import ScriptError

CONVERTERS = {"int": int, "float": float, "bool": bool, "str": str}
PRESENCE = "presence"  # `"X" in os.environ`: only whether it is set matters


@dataclass
class EnvRead:
    """One place the script reads a variable."""
    name: str
    line: int
    type: str                      # int | float | bool | str | presence
    conversions: tuple[str, ...]   # innermost first, e.g. ("int", "bool") for bool(int(...))
    default_kind: str              # literal | expression | none
    default_source: str = ""       # the default as written in the script ("" when none)
    literal: ast.expr | None = None  # the literal's node: its offsets locate it for a rewrite


@dataclass
class Knob:
    """A variable and every read of it; type and default are those of its first read that takes a value (a
    `"RANK" in os.environ` test says less than the `int(os.environ.get("RANK", "0"))` beside it)."""
    name: str
    reads: list[EnvRead] = field(default_factory=list)

    @property
    def first(self) -> EnvRead:
        return next((r for r in self.reads if r.type != PRESENCE), self.reads[0])

    @property
    def type(self) -> str:
        return self.first.type

    @property
    def default(self) -> str:
        read = self.first
        text = " ".join(read.default_source.split())
        text = text if len(text) <= 40 else text[:37] + "..."
        return {"literal": text, "expression": "expression: " + text}.get(read.default_kind, "none")

    @property
    def lines(self) -> list[int]:
        return [r.line for r in self.reads]

    def default_value(self):
        """The script's own value when the variable is unset (its literal through the conversions), else None."""
        read = self.first
        if read.default_kind != "literal":
            return None
        value = ast.literal_eval(read.literal)
        try:
            for name in read.conversions:
                value = CONVERTERS[name](value)
        except (TypeError, ValueError):
            return None
        return value


@dataclass
class ScriptKnobs:
    path: str
    knobs: dict[str, Knob]
    dynamic_lines: list[int]  # reads whose variable name is computed: unknowable from the source

    def get(self, name: str) -> Knob | None:
        return self.knobs.get(name)


class _Imports(ast.NodeVisitor):
    """Which local names mean the os module, os.environ and os.getenv, wherever the script imports them."""

    def __init__(self):
        self.os, self.environ, self.getenv = {"os"}, set(), set()

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name == "os":
                self.os.add(alias.asname or "os")

    def visit_ImportFrom(self, node):
        if node.module == "os":
            for alias in node.names:
                if alias.name == "environ":
                    self.environ.add(alias.asname or "environ")
                elif alias.name == "getenv":
                    self.getenv.add(alias.asname or "getenv")


def _is_environ(node, names: _Imports) -> bool:
    if isinstance(node, ast.Attribute) and node.attr == "environ":
        return isinstance(node.value, ast.Name) and node.value.id in names.os
    return isinstance(node, ast.Name) and node.id in names.environ


def _is_getenv(func, names: _Imports) -> bool:
    if isinstance(func, ast.Attribute) and func.attr == "getenv":
        return isinstance(func.value, ast.Name) and func.value.id in names.os
    return isinstance(func, ast.Name) and func.id in names.getenv


def _is_literal(node) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
        return isinstance(node, ast.Constant) and type(node.value) in (int, float)
    return isinstance(node, ast.Constant) and node.value is not None and type(node.value) in (int, float, bool, str)


def _read_of(node, names: _Imports):
    """(name node, default node or None, kind) when `node` reads the environment, else None."""
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        default = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "default"), None)
        if isinstance(func, ast.Attribute) and func.attr in ("get", "setdefault") and _is_environ(func.value, names):
            return node.args[0], default, "call"
        if _is_getenv(func, names):
            return node.args[0], default, "call"
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value, names):
        return node.slice, None, "call"
    if (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn))
            and _is_environ(node.comparators[0], names)):
        return node.left, None, PRESENCE
    return None


def _conversions(node, parents: dict) -> tuple[str, ...]:
    """The conversion calls wrapped directly around `node`, innermost first."""
    chain = []
    parent = parents.get(node)
    while (isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and parent.func.id in CONVERTERS
           and len(parent.args) == 1 and parent.args[0] is node):
        chain.append(parent.func.id)
        node, parent = parent, parents.get(parent)
    return tuple(chain)


def read_knobs(source: str, path: str = "<script>") -> ScriptKnobs:
    """Every environment variable `source` reads, in order of first read."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise ScriptError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    names = _Imports()
    names.visit(tree)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    knobs: dict[str, Knob] = {}
    dynamic = []
    for node in sorted(ast.walk(tree), key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0))):
        found = _read_of(node, names)
        if found is None:
            continue
        name_node, default, kind = found
        if not (isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)):
            dynamic.append(node.lineno)
            continue
        if kind == PRESENCE:
            read = EnvRead(name_node.value, node.lineno, PRESENCE, (), "none")
        else:
            chain = _conversions(node, parents)
            if default is None or (isinstance(default, ast.Constant) and default.value is None):
                default_kind, literal = "none", None
            else:
                default_kind, literal = ("literal", default) if _is_literal(default) else ("expression", None)
            literal_type = type(ast.literal_eval(literal)).__name__ if literal is not None else "str"
            read = EnvRead(name_node.value, node.lineno, chain[-1] if chain else literal_type, chain, default_kind,
                           ast.get_source_segment(source, default) or "" if default is not None else "", literal)
        knobs.setdefault(read.name, Knob(read.name)).reads.append(read)
    return ScriptKnobs(path, knobs, dynamic)


def read_script(path: str) -> ScriptKnobs:
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except FileNotFoundError:
        raise ScriptError(f"script {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScriptError(f"cannot read script {path}: {exc}") from None
    return read_knobs(source, path)


def format_table(script: ScriptKnobs) -> str:
    rows = [("VARIABLE", "TYPE", "DEFAULT", "LINE")]
    for knob in script.knobs.values():
        lines = ", ".join(str(n) for n in knob.lines[:4]) + (", ..." if len(knob.lines) > 4 else "")
        rows.append((knob.name, knob.type, knob.default, lines))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    text = "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows)
    text += f"\n{len(script.knobs)} variables read by {script.path}"
    if script.dynamic_lines:
        text += f"; reads with a computed name (not listed) on lines {', '.join(map(str, script.dynamic_lines))}"
    return text


# --- checks the space loader runs before anything executes -------------------------------------------------

def check_read(script: ScriptKnobs, name: str, what: str) -> Knob:
    """The knob for `name`, or one line refusing a `what` (e.g. "dimension", "fixed variable") the script never reads."""
    knob = script.get(name)
    if knob is None:
        close = difflib.get_close_matches(name, list(script.knobs), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ScriptError(f"{what} {name}: {script.path} never reads this environment variable{hint}")
    return knob


def env_value(knob: Knob, value, what: str = "value") -> str:
    """`value` as the string the environment carries, refused in one line when the script's read cannot take it
    (1.5 for an int(...) read, "abc" for a float(...) read, 2 for a bool(int(...)) read)."""
    kind = knob.type

    def refuse(why: str):
        raise ScriptError(f"{what} {value!r} for {knob.name}: {why} (the script reads it as {kind}, "
                          f"line {knob.first.line}, default {knob.default})")

    if isinstance(value, (list, dict, tuple)) or value is None:
        refuse("not a single value")
    if kind == "int":
        if isinstance(value, bool) or isinstance(value, float):
            refuse("not an integer")
        text = str(value)
        try:
            int(text)
        except ValueError:
            refuse("not an integer")
        return text
    if kind == "float":
        if isinstance(value, bool):
            refuse("not a number")
        try:
            number = float(value)
        except ValueError:
            refuse("not a number")
        return repr(number) if isinstance(value, float) or not math.isfinite(number) else str(value)
    if kind == "bool":
        truth = {True: True, False: False, 1: True, 0: False, "1": True, "0": False, "true": True, "false": False}
        key = value.lower() if isinstance(value, str) else value
        if isinstance(key, float) or key not in truth:
            refuse("not a boolean (true/false or 1/0)")
        if "int" in knob.first.conversions:
            return "1" if truth[key] else "0"
        return "1" if truth[key] else ""  # bool(str): only the empty string is false
    return str(value)
