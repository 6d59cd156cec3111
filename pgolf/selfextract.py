"""The self-extracting form of a script and its counted files: the way the records count their code.

Each Python source loses its docstrings and comments (through `ast`: the tree of what runs is checked equal
before and after), the sources are compressed with lzma and base85-encoded into a two-line loader:

    import lzma as L,base64 as B
    exec(L.decompress(B.b85decode("...")))

The decompressed bootstrap runs the script in the loader's own module namespace, so `__name__` is
"__main__" under `python train_gpt.py` and under torchrun alike; it registers every source with linecache
under the loader's own path (tracebacks and `inspect.getsource`, which Triton's kernels need, see the code) and makes each counted `.py`
file beside the script importable by its module name from the bundle. Counted files that are not Python
modules beside the script are kept as plain files next to the loader, counted at their size.
The loader imports only the standard library.
"""

import ast
import base64
import functools
import lzma
import os
from dataclasses import dataclass

LOADER = 'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("{}")))\n'
# Runs inside the loader's exec: names stay inside _pgolf_run so the script's namespace gets only that one.
BOOTSTRAP = """def _pgolf_run(M,S,g):
 import sys,linecache,importlib.abc as A,importlib.util as U
 F=g.get('__file__',M)
 for f,s in S.items():f=F if f==M else f;linecache.cache[f]=(len(s),None,s.splitlines(True),f)
 class P(A.MetaPathFinder,A.Loader):
  def find_spec(s,n,p=None,t=None):return U.spec_from_loader(n,s)if n+'.py'in S and n+'.py'!=M else None
  def exec_module(s,m):f=m.__name__+'.py';exec(compile(S[f],f,'exec'),m.__dict__)
 if len(S)>1:sys.meta_path.insert(0,P())
 exec(compile(S[M],F,'exec'),g)
_pgolf_run({main!r},{sources!r},globals())
"""


class SelfExtractError(ValueError):
    """A script or counted file that cannot be put in self-extracting form; the message names it."""


@dataclass
class SelfExtracting:
    loader: str                 # the file that replaces the script
    plain_files: dict[str, bytes]  # counted files kept as they are: relative path -> content
    bytes_plain: int            # script + counted files as given
    bytes_stripped: int         # the same with docstrings and comments removed from the Python sources
    bytes_compressed: int       # loader + plain files: what the submission counts

    def write(self, folder: str, name: str) -> str:
        """Write the loader as folder/name and the plain counted files beside it; returns the loader's path."""
        for rel, data in self.plain_files.items():
            os.makedirs(os.path.dirname(os.path.join(folder, rel)) or folder, exist_ok=True)
            with open(os.path.join(folder, rel), "wb") as f:
                f.write(data)
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.loader)
        return path


def _is_bare_string(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str)


def _without_docstrings(tree: ast.AST) -> ast.AST:
    # Every bare string statement of a module, class or function body, not only the first: an assembled script holds
    # each module's docstring in mid-script, where it is no docstring but a statement that does nothing.
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            node.body = [s for s in node.body if not _is_bare_string(s)] or [ast.Pass()]
    return tree


def _parse(source: str, path: str) -> ast.Module:
    try:
        return ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise SelfExtractError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None


def _one_space_indents(text: str) -> str:
    # ast.unparse writes every string on one line (escaped), so each line's leading spaces are indentation,
    # four per level; one per level is the same program in fewer bytes (the round-trip check below confirms).
    lines = []
    for line in text.splitlines():
        body = line.lstrip(" ")
        lines.append(" " * ((len(line) - len(body)) // 4) + body)
    return "\n".join(lines) + "\n"


def strip(source: str, path: str = "<script>") -> str:
    """`source` without docstrings and comments, refused if what runs would change (ast.unparse's round trip)."""
    return _strip(source, path)[0]


def _strip(source: str, path: str) -> tuple[str, ast.stmt | None]:
    """strip's text and the first top-level statement left (None: nothing but docstrings and comments)."""
    tree = _parse(source, path)
    first = next((s for s in tree.body if not _is_bare_string(s)), None)
    tree = _without_docstrings(tree)
    before = ast.dump(tree)  # ast.unparse leaves the tree as it is: one parse serves both
    stripped = _one_space_indents(ast.unparse(tree))
    if ast.dump(_without_docstrings(_parse(stripped, path + " (stripped)"))) != before:
        raise SelfExtractError(f"{path}: stripping docstrings and comments would change what runs")
    return stripped, first


_strip_piece = functools.lru_cache(maxsize=64)(_strip)


def strip_pieces(pieces: tuple[str, ...], path: str = "<script>") -> str:
    """strip("".join(pieces)), for pieces cut between top-level statements, each piece stripped once per process: the
    search strips a script per set of modules, and the sets share most of them (stripping one took ~0.4 s a time).
    ast.unparse starts each statement on a line of its own and puts a blank line before a def or class that does
    not open the text: the pieces are joined by that rule (a test holds the result to strip of the whole)."""
    out = []
    for piece in pieces:
        text, first = _strip_piece(piece, path)
        if first is not None:
            opens_definition = isinstance(first, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            out.append("\n" + text if out and opens_definition else text)
    return "".join(out)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise SelfExtractError(f"cannot read counted file {path}: {exc.strerror}") from None


def _decode(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SelfExtractError(f"{path} is not UTF-8 text") from None


def build(script: str, counted: list[str] = ()) -> SelfExtracting:
    """The self-extracting form of `script` plus its counted files (paths; relative ones against the script's
    folder), checked to decompress and compile before it is used."""
    folder = os.path.dirname(os.path.abspath(script))
    main = os.path.basename(script)
    modules, plain, paths = {}, {}, {main: script}
    for item in counted:
        path = item if os.path.isabs(item) else os.path.join(folder, item)
        rel = os.path.relpath(path, folder)
        data = _read(path)
        if rel.endswith(".py") and os.sep not in rel and rel.isascii() and rel[:-3].isidentifier():
            modules[rel], paths[rel] = _decode(path, data), path
        else:
            plain[rel] = data
    return _bundle(main, {main: _decode(script, _read(script)), **modules}, plain, paths)


def build_source(source: str, name: str, stripped: str | None = None, check: bool = True) -> SelfExtracting:
    """The self-extracting form of one script given as text (pgolf's assembled train_gpt.py), as `build` makes it;
    `stripped`: strip(source), when the caller has it already; check=False: only its size is wanted (the search
    measures many configs' code), so the loader is not decompressed and compiled back (_check)."""
    return _bundle(name, {name: source}, {}, {name: name}, {} if stripped is None else {name: stripped}, check)


def _bundle(main: str, texts: dict[str, str], plain: dict[str, bytes], paths: dict[str, str],
            stripped: dict[str, str] | None = None, check: bool = True) -> SelfExtracting:
    """texts: file name -> Python source (main first), each stripped (unless `stripped` has it); plain: counted files
    kept as they are; paths: file name -> the path error messages name."""
    stripped = stripped or {}
    sources = {rel: stripped[rel] if rel in stripped else strip(text, paths[rel]) for rel, text in texts.items()}
    payload = BOOTSTRAP.format(main=main, sources=sources).encode("utf-8")
    encoded = base64.b85encode(lzma.compress(payload, preset=9 | lzma.PRESET_EXTREME)).decode("ascii")
    loader = LOADER.format(encoded)
    if check:
        _check(loader, payload, main)
    return SelfExtracting(loader, plain, sum(len(t.encode("utf-8")) for t in texts.values()) + sum(map(len, plain.values())),
                          sum(len(s.encode("utf-8")) for s in sources.values()) + sum(map(len, plain.values())),
                          len(loader.encode("utf-8")) + sum(map(len, plain.values())))


def _check(loader: str, payload: bytes, main: str) -> None:
    """The loader must give back the payload, and the payload (bootstrap and every source) must compile."""
    tree = _parse(loader, f"{main} (loader)")
    literal = tree.body[1].value.args[0].args[0].args[0].value
    if lzma.decompress(base64.b85decode(literal)) != payload:
        raise SelfExtractError(f"{main}: the self-extracting form does not decompress to its payload")
    bootstrap = _parse(payload.decode("utf-8"), f"{main} (bootstrap)")
    sources = ast.literal_eval(bootstrap.body[-1].value.args[1])
    for name, source in sources.items():
        try:
            compile(source, name, "exec")
        except SyntaxError as exc:
            raise SelfExtractError(f"{name}:{exc.lineno}: the stripped source does not compile: {exc.msg}") from None
