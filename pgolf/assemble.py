"""Assemble the standalone submission script from the pgolf modules it is made of.

The script is the counted code of a submission: its byte size is `code_bytes` in every metric, so the
search pays for exactly the code a submission ships. Assembly is plain concatenation in dependency
order: intra-package imports (`from pgolf.x import ...`) are dropped, the remaining imports are hoisted
and de-duplicated, and the `CONFIG: dict = {}` line of the entry module receives the run's config, each key
read from an environment variable with the run's value as its default (pgolf/script_env.py names them).
"""

import ast
import os

from pgolf.config import SECTIONS
from pgolf.script_env import config_source, env_name

# Dependency order: every module only uses names defined by the ones before it.
SCRIPT_MODULES = ("shards", "bpb", "fused", "model", "optim", "quant", "gptq", "storage", "config", "entropy_codec", "artifact", "ttt", "ngram", "evaluate", "qat", "train", "submission")
# Modules only some configs call: a script leaves them out (and does not pay their bytes) when its config does not.
# module -> (section, key, op, value): the config calls the module when config[section][key] op value. A script
# that leaves one out refuses, in one line, a variable that would set that key so that it needs the module.
OPTIONAL_MODULES = {"ttt": ("eval", "ttt", "!=", "off"), "entropy_codec": ("quant", "compressor", "==", "rans"),
                    "ngram": ("eval", "ngram_order", "!=", 0)}
CONFIG_LINE = "CONFIG: dict = {}"
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


def _split_module(name: str, source: str) -> tuple[list[str], str]:
    """(import lines, body without imports) of one module, checking the assembly rules."""
    tree = ast.parse(source)
    lines = source.splitlines()
    imports, drop = [], set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if node.end_lineno != node.lineno:
                raise AssemblyError(f"pgolf/{name}.py:{node.lineno}: imports must fit on one line")
            text = lines[node.lineno - 1].strip()
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "pgolf"):
                if node.level or not all(a.asname is None for a in node.names):
                    raise AssemblyError(f"pgolf/{name}.py:{node.lineno}: use absolute pgolf imports without aliases")
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "pgolf" for a in node.names):
                raise AssemblyError(f"pgolf/{name}.py:{node.lineno}: import names from pgolf modules, not the modules")
            else:
                imports.append(text)
            drop.add(node.lineno)
    body = "\n".join(line for i, line in enumerate(lines, 1) if i not in drop)
    return imports, body.strip("\n")


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
    imports: list[str] = []
    bodies, owners, left_out = [], {}, []
    for name in SCRIPT_MODULES:
        if name in OPTIONAL_MODULES and not _needs(name, config_dict):
            left_out.append(name)
            continue
        with open(_module_path(name), encoding="utf-8") as f:
            source = f.read()
        for defined in _top_level_names(source):
            if defined in owners:
                raise AssemblyError(f"{defined!r} is defined in both pgolf/{owners[defined]}.py and pgolf/{name}.py")
            owners[defined] = name
        module_imports, body = _split_module(name, source)
        imports += [line for line in module_imports if line not in imports]
        bodies.append(f"# {'-' * 40} pgolf/{name}.py\n\n{body}")
    script = "\n".join([SCRIPT_HEADER] + _merge_imports(imports) + [""] + ["\n\n\n".join(bodies)]) + "\n"
    if script.count(CONFIG_LINE) != 1:
        raise AssemblyError(f"the entry module must hold exactly one line {CONFIG_LINE!r}")
    return script.replace(CONFIG_LINE, config_source(config_dict) + "".join(_left_out_guard(m, config_dict) for m in left_out))


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
            f"which this script leaves out (export one from a config that uses it)\")")


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


def code_bytes(config_dict: dict) -> int:
    return len(assemble_script(config_dict).encode("utf-8"))
