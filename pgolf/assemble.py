"""Assemble the standalone submission script from the pgolf modules it is made of.

The script is the counted code of a submission: its byte size is `code_bytes` in every metric, so the
search pays for exactly the code a submission ships. Assembly is plain concatenation in dependency
order: intra-package imports (`from pgolf.x import ...`) are dropped, the remaining imports are hoisted
and de-duplicated, and the `CONFIG: dict = {}` line of the entry module receives the run's config, each key
read from an environment variable with the run's value as its default (pgolf/script_env.py names them).
With quant.code = "compressed" the counted script is the self-extracting form of the assembled one
(pgolf/selfextract.py, as the records count their code); the readable source goes beside it, not counted.
"""

import ast
import builtins
import functools
import os
import re

from pgolf.config import SECTIONS
from pgolf.script_env import config_source, env_name
from pgolf.selfextract import build_source, strip, strip_pieces

# Dependency order: every module only uses names defined by the ones before it.
SCRIPT_MODULES = ("shards", "bpb", "fused", "model", "optim", "quant", "gptq", "storage", "config", "entropy_codec", "artifact", "row_order", "ttt", "ngram", "evaluate", "qat", "train", "submission")
# Modules only some configs call: a script leaves them out (and does not pay their bytes) when its config does not.
# module -> (section, key, op, value): the config calls the module when config[section][key] op value. A script
# that leaves one out refuses, in one line, a variable that would set that key so that it needs the module.
OPTIONAL_MODULES = {"ttt": ("eval", "ttt", "!=", "off"), "entropy_codec": ("quant", "compressor", "==", "rans"),
                    "ngram": ("eval", "ngram_order", "!=", 0), "row_order": ("quant", "row_order", "!=", "off")}
CONFIG_LINE = "CONFIG: dict = {}"
LEFT_OUT_ADVICE = "which this script leaves out (export one from a config that uses it)"  # each refusal's end
SCRIPT_HEADER = '''"""Parameter Golf submission, assembled by pgolf from its modules (config, data, model, training,
quantization, artifact, evaluation). Runs standalone: torch, numpy, sentencepiece, zstandard and the
standard library only.

Train + export + score:   DATA_PATH=... TOKENIZER_PATH=... python train_gpt.py   (or torchrun --nproc_per_node=8)
Change a setting:         MATRIX_LR=0.03 NUM_LAYERS=10 ... python train_gpt.py   (every setting: CONFIG below)
Score a model file only:  EVAL_ONLY=1 MODEL_PATH=final_model.pgolf DATA_PATH=... TOKENIZER_PATH=... python train_gpt.py
"""
'''


class AssemblyError(RuntimeError):
    """A counted module breaks an assembly rule (the message says which and where)."""


def _module_path(name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")


def _split_module(name: str, source: str) -> tuple[list[str], str, dict]:
    """(import lines, body without imports, {pgolf module: the names imported from it}) of one module, checking the
    assembly rules."""
    tree = ast.parse(source)
    lines = source.splitlines()
    imports, drop, from_pgolf = [], set(), {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if node.end_lineno != node.lineno:
                raise AssemblyError(f"pgolf/{name}.py:{node.lineno}: imports must fit on one line")
            text = lines[node.lineno - 1].strip()
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "pgolf"):
                if node.level or not all(a.asname is None for a in node.names):
                    raise AssemblyError(f"pgolf/{name}.py:{node.lineno}: use absolute pgolf imports without aliases")
                from_pgolf.setdefault(node.module.split(".")[1], []).extend(a.name for a in node.names)
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "pgolf" for a in node.names):
                raise AssemblyError(f"pgolf/{name}.py:{node.lineno}: import names from pgolf modules, not the modules")
            else:
                imports.append(text)
            drop.add(node.lineno)
    body = "\n".join(line for i, line in enumerate(lines, 1) if i not in drop)
    return imports, body.strip("\n"), from_pgolf


def _top_level_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def assemble_script(config_dict: dict) -> str:
    """The standalone script for a run config (as a plain dict), ready to write as train_gpt.py."""
    return _template(_modules(config_dict)).replace(CONFIG_LINE, _config_line(config_dict))


def _modules(config_dict: dict) -> tuple:
    """(name, mtime, size) of the modules this config's script is made of: a changed file is a new template."""
    names = [n for n in SCRIPT_MODULES if n not in OPTIONAL_MODULES or _needs(n, config_dict)]
    return tuple((n, os.stat(_module_path(n)).st_mtime_ns, os.stat(_module_path(n)).st_size) for n in names)


def _config_line(config_dict: dict) -> str:
    """CONFIG, each key read from its environment variable, and the refusals of settings a left-out module serves."""
    left_out = [m for m in OPTIONAL_MODULES if not _needs(m, config_dict)]
    runs_with = _runs_with(config_dict)
    return config_source(runs_with) + "".join(_left_out_guard(m, runs_with) for m in left_out)


def _needs(module: str, config_dict: dict) -> bool:
    section, key, op, value = OPTIONAL_MODULES[module]
    current = config_dict.get(section, {}).get(key, getattr(SECTIONS[section](), key))
    return current != value if op == "!=" else current == value


def _left_out_guard(module: str, config_dict: dict) -> str:
    """Generated lines after CONFIG: the one-line refusal of a setting that needs the left-out `module`."""
    section, key, op, value = OPTIONAL_MODULES[module]
    if key not in config_dict.get(section, {}):
        return ""  # not read from the environment: it keeps the assembled value
    setting = f"CONFIG[{section!r}][{key!r}]"
    return (f"\nif {setting} {op} {value!r}:\n    raise SystemExit(f\"error: {env_name(section, key)}={{{setting}}} needs pgolf/{module}.py, "
            f"{LEFT_OUT_ADVICE}\")")


@functools.lru_cache(maxsize=8)
def _template(modules: tuple) -> str:
    """The script before its config is written in (the search assembles it for every config it measures)."""
    imports: list[str] = []
    bodies, owners, wanted = [], {}, {}
    for module in modules:
        name = module[0]
        defined_names, module_imports, body, from_pgolf = _parsed_module(module)
        for defined in defined_names:
            if defined in owners:
                raise AssemblyError(f"{defined!r} is defined in both pgolf/{owners[defined]}.py and pgolf/{name}.py")
            owners[defined] = name
        imports += [line for line in module_imports if line not in imports]
        bodies.append(f"# {'-' * 40} pgolf/{name}.py\n\n{body}")
        for module, names in from_pgolf.items():
            wanted.setdefault(module, []).extend(n for n in names if n not in wanted.get(module, []))
    kept = {name for name, _, _ in modules}
    stubs = _left_out_stubs({m: names for m, names in wanted.items() if m in OPTIONAL_MODULES and m not in kept})
    script = "\n".join([SCRIPT_HEADER] + _merge_imports(imports) + [""] + ["\n\n\n".join(stubs + bodies)]) + "\n"
    if script.count(CONFIG_LINE) != 1:
        raise AssemblyError(f"the entry module must hold exactly one line {CONFIG_LINE!r}")
    return script


@functools.lru_cache(maxsize=64)
def _parsed_module(module: tuple) -> tuple:
    """(top-level names, import lines, body, {pgolf module: names imported}) of one module as _modules names it (name,
    mtime, size): parsed once per process, where each module set was a template of its own parsed whole (a trial
    packing with and without rans and the row order builds ~6 sets: ~0.2 s of parsing apiece). Read only."""
    name = module[0]
    source = _module_source(name)
    return (frozenset(_top_level_names(source)), *_split_module(name, source))


def _module_source(name: str) -> str:
    with open(_module_path(name), encoding="utf-8") as f:
        return f.read()


LEFT_OUT = "_module_left_out"


def _left_out_stubs(wanted: dict[str, list[str]]) -> list[str]:
    """Stand-ins for the names the script's modules import from the optional modules it leaves out (module -> names),
    so that a model file needing one (EVAL_ONLY with another config's rans-coded or reordered file, TTT or the tilt in
    its eval settings) stops with one line naming the module instead of a NameError. An exception class is defined
    as such and never raised: an `except` that names it (artifact.py's, for rans frames) works for every other error."""
    if not wanted:
        return []
    stubs = [f"# {'-' * 40} left out of this script\n\ndef {LEFT_OUT}(module):\n    raise SystemExit(f\"error: this model file "
             f"or setting needs pgolf/{{module}}, {LEFT_OUT_ADVICE}\")"]
    for module, names in wanted.items():
        section, key, op, value = OPTIONAL_MODULES[module]
        classes = {n.name: n for n in ast.parse(_module_source(module)).body if isinstance(n, ast.ClassDef)}
        for name in names:
            bases = [b.id for b in classes[name].bases if isinstance(b, ast.Name)] if name in classes else []
            if bases and all(isinstance(getattr(builtins, b, None), type) and issubclass(getattr(builtins, b), BaseException) for b in bases):
                stubs.append(f"class {name}({', '.join(bases)}):\n    pass")
            else:
                stubs.append(f"def {name}(*args, **kwargs):\n    {LEFT_OUT}({f'{module}.py ({section}.{key} {op} {value!r})'!r})")
    return stubs


def _runs_with(config_dict: dict) -> dict:
    """The config the script carries: without the form its own code is counted in (it runs the same either way, and a
    plain script stays byte for byte what it was before that key existed)."""
    quant = config_dict.get("quant", {})
    return {**config_dict, "quant": {k: v for k, v in quant.items() if k != "code"}} if "code" in quant else config_dict


def _merge_imports(lines: list[str]) -> list[str]:
    """One line per `from M import ...` module; standard library first, then third-party."""
    plain, from_names = set(), {}
    for line in lines:
        node = ast.parse(line).body[0]
        if isinstance(node, ast.ImportFrom):
            names = from_names.setdefault(node.module, [])
            names += [a.name for a in node.names if a.name not in names]
        else:
            plain.add(line)
    merged = plain | {f"from {module} import {', '.join(sorted(names))}" for module, names in from_names.items()}

    def order(line: str) -> tuple:
        module = line.split()[1].split(".")[0]
        return (module in ("numpy", "sentencepiece", "torch", "zstandard"), line.startswith("from"), line)

    return sorted(merged, key=order)


SCRIPT_FILE = "train_gpt.py"
READABLE_FILE = "train_gpt_source.py"  # compressed code only: the readable script, not counted and not what runs
SOURCE_NOTE = ("# NOT COUNTED AND NOT WHAT RUNS: the readable source of train_gpt.py, which is its self-extracting form\n"
               "# (docstrings and comments stripped, lzma + base85; pgolf/selfextract.py). Rebuild: pgolf.selfextract.build.\n")


def is_compressed(config_dict: dict) -> bool:
    return config_dict.get("quant", {}).get("code", "plain") == "compressed"


MODULE_MARK = re.compile(r"(?m)^(?=# -{40} pgolf/\w+\.py$)")  # the line _template opens each module's body with


@functools.lru_cache(maxsize=8)
def _stripped_template(template: str) -> tuple[str, str]:
    """The template stripped (pgolf/selfextract.py's strip, a module body at a time), split around its config line."""
    before, after = strip_pieces(tuple(MODULE_MARK.split(template))).split(CONFIG_LINE + "\n")
    return before, after


@functools.lru_cache(maxsize=64)
def _self_extracting(modules: tuple, config_line: str, check: bool = True) -> str:
    # Stripping the whole script takes seconds and the search asks for every config it measures: the template is
    # stripped once and the config line alone per config (ast.unparse writes each top-level statement on its own, so
    # this is the whole script's strip; a test holds it to build_source on the whole script). check=False: for its size.
    before, after = _stripped_template(_template(modules))
    stripped = before + strip(config_line) + after
    return build_source(_template(modules).replace(CONFIG_LINE, config_line), SCRIPT_FILE, stripped=stripped, check=check).loader


def counted_script(config_dict: dict, check: bool = True) -> str:
    """The train_gpt.py a submission of this config ships and counts: the assembled script or its self-extracting form
    (check=False: not decompressed and compiled back, for its size alone)."""
    if is_compressed(config_dict):
        return _self_extracting(_modules(config_dict), _config_line(config_dict), check)
    return assemble_script(config_dict)


def code_bytes(config_dict: dict) -> int:
    """The counted code bytes of a config: the one figure the predictor, the allocation, a run and an export use."""
    return len(counted_script(config_dict, check=False).encode("utf-8"))


def write_script(folder: str, config_dict: dict) -> int:
    """Write folder/train_gpt.py as counted (and, compressed, the readable train_gpt_source.py beside it); its bytes."""
    script = counted_script(config_dict)
    if is_compressed(config_dict):
        with open(os.path.join(folder, READABLE_FILE), "w", encoding="utf-8") as f:
            f.write(SOURCE_NOTE + assemble_script(config_dict))
    with open(os.path.join(folder, SCRIPT_FILE), "w", encoding="utf-8") as f:
        f.write(script)
    return len(script.encode("utf-8"))
