"""Hostile files through every command that reads them: each is refused with one stderr line naming the problem.

Each row pairs a file a user may hand over by mistake or malice (empty, random bytes, text, truncated, a
file of another kind, a wrong version, a pickle that would run code, weights holding NaN) with a command
that reads that kind of file, and asserts: non-zero exit, exactly one stderr line, a message matching the
row's pattern, no traceback. Commands run in-process (the CLIs' main() returns the exit code) except the
rows marked as processes, which show exactly what a terminal shows (torch warnings included).
`pytest tests/test_hostile_files.py -s` prints the table "file x command -> message".
"""

import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
import random
import re
import types
import zipfile

import numpy as np
import pytest
import torch

from pgolf import cli as pgolf_cli
from pgolf.artifact import pack
from pgolf.assemble import assemble_script
from pgolf.checkpoint import checkpoint_bytes
from pgolf.config import config_to_dict
from pgolf.configfiles import config_to_toml
from pgolf.datasets import DataPaths
from pgolf.evaluate import NonFiniteScore, evaluate_bpb
from pgolf.model import GPT
from pgolf.storage import quantize_state_dict
from pgolf.submission import calibrate, export_model, model_meta
from search import cli as search_cli

from conftest import DATA, SHARDS, TOKENIZER, run_cli, small_config

OFFICIAL = os.path.join(DATA, "official_tiny")
SPACE = os.path.join(os.path.dirname(__file__), "spaces", "micro.toml")
STUDY = "s"
RANDOM = random.Random(0)  # "random bytes" rows: the same bytes every run


class RunsCode:
    """Unpickling this would open (create) a file: the marker shows whether any loader ran it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_checkpoint(marker: str) -> bytes:
    """A real torch zip whose data.pkl calls open() when unpickled."""
    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, buffer)
    evil = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(evil, "w") as target:
        for item in source.infolist():
            payload = pickle.dumps({"tok_emb.weight": RunsCode(marker)}, protocol=2)
            target.writestr(item, payload if item.filename.endswith("data.pkl") else source.read(item.filename))
    return evil.getvalue()


def shard_bytes(tokens: int, version: int = 1) -> bytes:
    header = [20240520, version, tokens] + [0] * 253
    return b"".join(v.to_bytes(4, "little") for v in header) + b"\x01\x00" * tokens


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def nan_model(config, value=math.nan) -> GPT:
    torch.manual_seed(0)
    model = GPT(config.model)
    with torch.no_grad():
        model.blocks[0].attn.c_q.weight[3, 5] = value
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every hostile file and folder of the table, built once; names -> paths."""
    root = tmp_path_factory.mktemp("hostile")
    paths = {}

    def put(name: str, data: bytes | str) -> str:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        paths[name] = str(path)
        return str(path)

    config = small_config()
    torch.manual_seed(0)
    good_model = GPT(config.model)
    good_ckpt = checkpoint_bytes(good_model, config)
    good_blob = export_model(good_model, config)[0]
    official_pt, official_ptz = read(os.path.join(OFFICIAL, "final_model.pt")), read(os.path.join(OFFICIAL, "final_model.int8.ptz"))
    tokenizer = read(TOKENIZER)
    shard = read(os.path.join(SHARDS, "fineweb_val_000000.bin"))
    paths["good checkpoint"] = put("good/checkpoint.pgolf", good_ckpt)
    paths["good config"] = put("good/config.toml", config_to_toml(config))
    paths["marker"] = str(root / "pwned")

    # Checkpoints (pgolf import / score / search allocate).
    put("empty.pt", b"")
    put("random.pt", RANDOM.randbytes(4096))
    put("notes.pt", "These are not weights.\nJust a text file.\n")
    put("truncated final_model.pt", official_pt[: len(official_pt) // 2])
    put("truncated final_model.int8.ptz", official_ptz[: len(official_ptz) // 2])
    put("truncated checkpoint.pgolf", good_ckpt[: len(good_ckpt) // 2])
    put("model file as checkpoint.pgolf", good_blob)
    put("shard as final_model.pt", shard)
    put("version-9 checkpoint.pgolf", good_ckpt[:8] + (9).to_bytes(2, "little") + good_ckpt[10:])
    put("pickle that runs code.pt", evil_checkpoint(paths["marker"]))
    state = torch.load(os.path.join(OFFICIAL, "final_model.pt"), weights_only=True)
    state["blocks.1.mlp.fc.weight"][7, 7] = math.nan
    buffer = io.BytesIO()
    torch.save(state, buffer)
    put("official final_model.pt holding NaN", buffer.getvalue())
    put("checkpoint.pgolf holding inf", checkpoint_bytes(nan_model(config, math.inf), config))
    put("folder without a checkpoint/notes.txt", "nothing here\n")
    paths["folder without a checkpoint"] = str(root / "folder without a checkpoint")

    # Tokenizers (--tokenizer).
    put("empty.model", b"")
    put("random.model", RANDOM.randbytes(4096))
    put("text.model", "not a tokenizer\n")
    put("truncated tokenizer.model", tokenizer[: len(tokenizer) // 2])
    put("shard as tokenizer.model", shard)
    put("checkpoint as tokenizer.pgolf", good_ckpt)

    # Shard folders (--data): train and val shard both hostile.
    for name, data in (("empty shards", b""), ("random shards", RANDOM.randbytes(4096)), ("text shards", "1 2 3\n"),
                       ("truncated shards", shard[: len(shard) - 7]), ("version-2 shards", shard_bytes(64, version=2)),
                       ("tokenizer as shards", tokenizer), ("shards of 0 tokens", shard_bytes(0))):
        for split in ("train", "val"):
            put(f"{name}/fineweb_{split}_000000.bin", data)
        paths[name] = str(root / name)

    # Config and space files.
    for kind in ("config", "space"):
        put(f"empty {kind}.toml", b"")
        put(f"random {kind}.toml", RANDOM.randbytes(2048))
        put(f"text {kind}.toml", "this is prose, not TOML\n")
        put(f"truncated {kind}.toml", "[model]\nnum_layers = 2\nmodel_dim =")
        put(f"shard as {kind}.toml", shard[:4096])
        put(f"checkpoint as {kind}.toml", good_ckpt)
    put("space as config.toml", read(SPACE))
    put("config as space.toml", config_to_toml(config))
    (root / "folder as config.toml").mkdir()
    paths["folder as config.toml"] = str(root / "folder as config.toml")

    # Run folders (pgolf eval): a good metrics.json beside hostile model files, and hostile metrics.json.
    data = DataPaths(os.path.join(SHARDS, "fineweb_train_*.bin"), os.path.join(SHARDS, "fineweb_val_*.bin"), TOKENIZER, 1024)
    metrics = {"config": config_to_dict(config), "data": dataclasses.asdict(data), "val_bpb_post": 4.0}
    for name, model_file in (("run: empty model file", b""), ("run: random model file", RANDOM.randbytes(4096)),
                             ("run: truncated model file", good_blob[:-100]),
                             ("run: version-9 model file", good_blob[:8] + (9).to_bytes(2, "little") + good_blob[10:]),
                             ("run: checkpoint as model file", good_ckpt),
                             ("run: model file holding NaN", export_model(nan_model(config), config)[0])):
        put(f"{name}/final_model.pgolf", model_file)
        put(f"{name}/metrics.json", json.dumps(metrics))
        paths[name] = str(root / name)
    good_json = json.dumps(metrics)
    for name, content in (("run: empty metrics.json", b""), ("run: random metrics.json", RANDOM.randbytes(2048)),
                          ("run: text metrics.json", "val_bpb 1.2\n"), ("run: truncated metrics.json", good_json[: len(good_json) // 2]),
                          ("run: metrics.json holding a list", "[1, 2]"),
                          ("run: submission.json as metrics.json", json.dumps({"author": "x", "val_bpb": 1.0})),
                          ("run: metrics.json recording NaN", json.dumps(dict(metrics, val_bpb_post=math.nan)))):
        put(f"{name}/final_model.pgolf", good_blob)
        put(f"{name}/metrics.json", content)
        paths[name] = str(root / name)
    (root / "run: no metrics.json").mkdir()
    paths["run: no metrics.json"] = str(root / "run: no metrics.json")

    # Export folders (search verify): hostile pgolf.json, a recorded NaN, a model file holding NaN.
    script = assemble_script(config_to_dict(config))

    def export(name: str, model_file: bytes, record: dict | bytes | str) -> None:
        put(f"{name}/train_gpt.py", script)
        put(f"{name}/final_model.pgolf", model_file)
        put(f"{name}/submission.json", "{}")
        put(f"{name}/pgolf.json", json.dumps(record) if isinstance(record, dict) else record)
        paths[name] = str(root / name)

    def record(model_file: bytes, bpb: float = 4.0) -> dict:
        return {"study": STUDY, "trial": 0, "cap_bytes": 16_000_000, "val_bpb_exact": bpb,
                "model_sha256": hashlib.sha256(model_file).hexdigest(), "data": dataclasses.asdict(data)}

    export("export: empty pgolf.json", good_blob, b"")
    export("export: random pgolf.json", good_blob, RANDOM.randbytes(2048))
    export("export: text pgolf.json", good_blob, "not json\n")
    export("export: pgolf.json holding a list", good_blob, "[]")
    export("export: submission.json as pgolf.json", good_blob, {"author": "x", "val_bpb": 1.0})
    export("export: pgolf.json recording NaN", good_blob, record(good_blob, math.nan))
    nan_blob = export_model(nan_model(config), config)[0]
    export("export: model file holding NaN", nan_blob, record(nan_blob))
    paths["export: missing folder"] = str(root / "no such export")

    # Study folders (search status / export): hostile study.json, and a real study whose trial metrics.json is hostile.
    for name, content in (("study: empty study.json", b""), ("study: random study.json", RANDOM.randbytes(2048)),
                          ("study: text study.json", "name = s\n"), ("study: study.json holding a list", "[]"),
                          ("study: metrics.json as study.json", good_json)):
        put(f"{name}/{STUDY}/study.json", content)
        paths[name] = str(root / name)
    for name, content in (("trial: empty metrics.json", b""), ("trial: random metrics.json", RANDOM.randbytes(2048)),
                          ("trial: truncated metrics.json", good_json[:40]),
                          ("trial: request.json as metrics.json", json.dumps({"config": {}, "data": {}}))):
        fake_study(root / name, good_blob, script)
        put(f"{name}/{STUDY}/trials/0000/metrics.json", content)
        paths[name] = str(root / name)
    for name, content in (("trial: random allocation.json", RANDOM.randbytes(2048)),
                          ("trial: metrics.json as allocation.json", good_json)):
        fake_study(root / name, good_blob, script)
        put(f"{name}/{STUDY}/trials/0000/allocation.json", content)
        paths[name] = str(root / name)
    # Matrix storage formats (pgolf/storage.py): impossible settings in config and space files, and model files
    # whose format arrays do not fit their matrix (built as pack() writes them: it does not validate).
    good_toml = config_to_toml(config)
    for name, old, new in (("config with outliers 0.5.toml", 'outliers = { "*" = 0.0 }', 'outliers = { "*" = 0.5 }'),
                           ("config with rank -1.toml", 'rank = { "*" = 0 }', 'rank = { "*" = -1 }'),
                           ("config with rank 1000.toml", 'rank = { "*" = 0 }', 'rank = { "*" = 1000 }'),
                           ("config with quantizer foo.toml", 'quantizer = { "*" = "rtn" }', 'quantizer = { "*" = "foo" }')):
        assert old in good_toml
        put(name, good_toml.replace(old, new))
    space_text = read(SPACE).decode()
    assert space_text.rstrip().splitlines()[-1].startswith("calib_tokens")  # [allocation] is its last table
    for name, line in (("space with outliers 0.9.toml", "outliers = [0.0, 0.9]"), ("space with ranks -2.toml", "ranks = [0, -2]"),
                       ("space with quantizer foo.toml", 'quantizers = ["rtn", "foo"]')):
        put(name, space_text + line + "\n")
    formatted = small_config(quant=dict(outliers={"*": 0.01}, rank={"*": 4}, calib_tokens=1024))
    calibration = calibrate(good_model, formatted, os.path.join(SHARDS, "fineweb_train_*.bin"), torch.device("cpu"))
    entries = quantize_state_dict(good_model.state_dict(), formatted.quant, *calibration)
    target = next(e for e in entries if e.name == "blocks.0.attn.c_q.weight")  # 64 x 64

    def broken(**changes) -> bytes:
        return pack([dataclasses.replace(e, **changes) if e is target else e for e in entries], model_meta(formatted), "zstd", 3)[0]

    past_the_end = target.outlier_gaps.astype(np.uint32)
    past_the_end[-1] += 64 * 64  # the gaps now sum past the matrix
    repeated = target.outlier_gaps.copy()
    repeated[5] = 0
    for name, model_file in (("run: model file with outlier positions out of range", broken(outlier_gaps=past_the_end)),
                             ("run: model file with repeated outlier positions", broken(outlier_gaps=repeated)),
                             ("run: model file with a low-rank factor of the wrong shape", broken(lr_b=target.lr_b[:, :-1]))):
        put(f"{name}/final_model.pgolf", model_file)
        put(f"{name}/metrics.json", json.dumps(metrics))
        paths[name] = str(root / name)
    out_of_range = broken(outlier_gaps=past_the_end)
    export("export: model file with outlier positions out of range", out_of_range, record(out_of_range))
    return paths


def fake_study(results, model_file: bytes, script: str) -> None:
    """A study of one complete feasible trial, as the coordinator leaves it (its metrics.json is the row's)."""
    from search.runner import startup_trials
    from search.study import StudySettings, open_study, save_settings

    directory = results / STUDY
    (directory / "trials" / "0000").mkdir(parents=True)
    settings = StudySettings(name=STUDY, space={"caps": {"artifact_bytes": 16_000_000}}, space_source=SPACE,
                             storage=f"sqlite:///{directory / 'study.db'}", trials=1)
    study = open_study(settings, startup_trials(1), create=True)
    trial = study.ask()
    for key, value in {"stage": "complete", "artifact_bytes": 100_000, "bytes_by_group": {"mlp": 100_000}}.items():
        trial.set_user_attr(key, value)
    for key in ("bytes", "train_seconds", "eval_seconds"):
        trial.set_constraint(key, -1.0)
    study.tell(trial, 4.0)
    save_settings(str(directory), settings)
    (directory / "trials" / "0000" / "final_model.pgolf").write_bytes(model_file)
    (directory / "trials" / "0000" / "train_gpt.py").write_text(script)


# Commands by the kind of file they read: name -> (cli, argv) for a path, the fixture's paths, an output folder.
CHECKPOINT = {
    "pgolf import": lambda p, f, out: ("pgolf", ["import", p, "--out", out]),
    "pgolf score": lambda p, f, out: ("pgolf", ["score", p, "--seq-len", "64"]),
    "search allocate": lambda p, f, out: ("search", ["allocate", p, "--cap", "200000", "--seq-len", "64", "--out", out]),
}
TOKENIZER_FILE = {
    "pgolf score --tokenizer": lambda p, f, out: ("pgolf", ["score", f["good checkpoint"], "--data", SHARDS, "--tokenizer", p]),
    "pgolf run --tokenizer": lambda p, f, out: ("pgolf", ["run", f["good config"], "--data", SHARDS, "--tokenizer", p, "--out", out]),
    "pgolf data build --tokenizer": lambda p, f, out: ("pgolf", ["data", "build", "--vocab", "1024", "--data", SHARDS, "--tokenizer", p]),
}
SHARD_FOLDER = {
    "pgolf score --data": lambda p, f, out: ("pgolf", ["score", f["good checkpoint"], "--data", p, "--tokenizer", TOKENIZER]),
    "pgolf run --data": lambda p, f, out: ("pgolf", ["run", f["good config"], "--data", p, "--tokenizer", TOKENIZER, "--out", out,
                                                     "--device", "cpu"]),
    "search allocate --data": lambda p, f, out: ("search", ["allocate", f["good checkpoint"], "--cap", "200000", "--data", p,
                                                            "--tokenizer", TOKENIZER, "--out", out]),
}
CONFIG_FILE = {"pgolf run": lambda p, f, out: ("pgolf", ["run", p, "--data", SHARDS, "--tokenizer", TOKENIZER, "--out", out])}
SPACE_FILE = {"search run --space": lambda p, f, out: ("search", ["run", "--space", p, "--study", "x", "--results", out])}
RUN_FOLDER = {"pgolf eval": lambda p, f, out: ("pgolf", ["eval", p])}
EXPORT_FOLDER = {"search verify": lambda p, f, out: ("search", ["verify", p])}
STUDY_FOLDER = {
    "search status": lambda p, f, out: ("search", ["status", STUDY, "--results", p]),
    "search export": lambda p, f, out: ("search", ["export", STUDY, "--trial", "0", "--out", out, "--results", p]),
}
REPORT = {"search report": lambda p, f, out: ("search", ["report", STUDY, "--out", os.path.join(out, "report.html"), "--results", p])}

PROCESS = "process"  # a row run as a real process
# (file, commands, pattern of the one error line[, PROCESS])
TABLE = [
    ("empty.pt", CHECKPOINT, r"empty\.pt is not a torch checkpoint: it is an empty file"),
    ("random.pt", CHECKPOINT, r"random\.pt is not a torch checkpoint: it is binary data"),
    ("notes.pt", CHECKPOINT, r"notes\.pt is not a torch checkpoint: it is a text file"),
    ("truncated final_model.pt", CHECKPOINT, r"is a damaged or truncated torch checkpoint \(PytorchStreamReader failed"),
    ("truncated final_model.int8.ptz", CHECKPOINT, r"corrupt or truncated zlib stream"),
    ("shard as final_model.pt", CHECKPOINT, r"is not a torch checkpoint: it is a token shard"),
    ("pickle that runs code.pt", CHECKPOINT, r"refusing to load .*: it holds more than plain tensors \(Unsupported global: GLOBAL io\.open"),
    ("pickle that runs code.pt", {"pgolf import": CHECKPOINT["pgolf import"]}, r"refusing to load .*Unsupported global", PROCESS),
    ("official final_model.pt holding NaN", CHECKPOINT, r"final_model\.pt holding NaN: tensor blocks\.1\.mlp\.fc\.weight holds NaN"),
    ("official final_model.pt holding NaN", {"pgolf score": CHECKPOINT["pgolf score"]}, r"tensor blocks\.1\.mlp\.fc\.weight holds NaN", PROCESS),
    *[(name, {"pgolf import": CHECKPOINT["pgolf import"]}, r"is a pgolf model file or checkpoint, not an official train_gpt\.py checkpoint")
      for name in ("truncated checkpoint.pgolf", "model file as checkpoint.pgolf", "version-9 checkpoint.pgolf", "checkpoint.pgolf holding inf")],
    *[(name, {k: CHECKPOINT[k] for k in ("pgolf score", "search allocate")}, pattern) for name, pattern in (
        ("truncated checkpoint.pgolf", r"checkpoint\.pgolf: model file is truncated: \d+ bytes, its frame table says \d+"),
        ("model file as checkpoint.pgolf", r"is a quantized model file, not a float checkpoint"),
        ("version-9 checkpoint.pgolf", r"unsupported model file version 9 \(this code reads version 1\)"),
        ("checkpoint.pgolf holding inf", r"holding inf: tensor blocks\.0\.attn\.c_q\.weight holds inf"),
        ("folder without a checkpoint", r"folder without a checkpoint is a folder without a checkpoint\.pgolf"))],
    ("folder without a checkpoint", {"pgolf import": CHECKPOINT["pgolf import"]}, r"cannot read .*folder without a checkpoint: Is a directory"),

    ("empty.model", TOKENIZER_FILE, r"tokenizer .*empty\.model is an empty file"),
    ("random.model", TOKENIZER_FILE, r"cannot load tokenizer .*random\.model: not a SentencePiece model"),
    ("text.model", TOKENIZER_FILE, r"cannot load tokenizer .*text\.model: not a SentencePiece model"),
    ("truncated tokenizer.model", TOKENIZER_FILE, r"cannot load tokenizer .*: not a SentencePiece model"),
    ("shard as tokenizer.model", TOKENIZER_FILE, r"cannot load tokenizer .*: not a SentencePiece model"),
    ("checkpoint as tokenizer.pgolf", TOKENIZER_FILE, r"tokenizer .*\.pgolf is not a SentencePiece \.model file"),

    ("empty shards", SHARD_FOLDER, r"shard .*fineweb_(train|val)_000000\.bin is empty"),
    ("random shards", SHARD_FOLDER, r"fineweb_(train|val)_000000\.bin is not a token shard \(wrong magic -?\d+, expected 20240520\)"),
    ("text shards", SHARD_FOLDER, r"fineweb_(train|val)_000000\.bin is not a token shard \(wrong magic"),
    ("truncated shards", SHARD_FOLDER, r"\.bin is truncated or padded: \d+ bytes, header says 108501 tokens"),
    ("version-2 shards", SHARD_FOLDER, r"\.bin has unsupported version 2 \(expected 1\)"),
    ("tokenizer as shards", SHARD_FOLDER, r"\.bin is not a token shard \(wrong magic"),
    ("shards of 0 tokens", {k: SHARD_FOLDER[k] for k in ("pgolf score --data", "search allocate --data")},
     r"validation split .* is shorter than one sequence of \d+ tokens"),
    ("shards of 0 tokens", {"pgolf run --data": SHARD_FOLDER["pgolf run --data"]}, r"shard .*fineweb_train_000000\.bin holds no tokens"),

    ("empty config.toml", CONFIG_FILE, r"config\.toml: config file is empty \(for the defaults, name the shipped config 'baseline'\)"),
    ("random config.toml", CONFIG_FILE, r"random config\.toml: not a TOML config file \(binary, not UTF-8 text\)"),
    ("text config.toml", CONFIG_FILE, r"text config\.toml: not valid TOML"),
    ("truncated config.toml", CONFIG_FILE, r"truncated config\.toml: not valid TOML"),
    ("shard as config.toml", CONFIG_FILE, r"not a TOML config file \(binary, not UTF-8 text\)"),
    ("checkpoint as config.toml", CONFIG_FILE, r"not a TOML config file \(binary, not UTF-8 text\)"),
    ("space as config.toml", CONFIG_FILE, r"space as config\.toml: unknown config section"),
    ("folder as config.toml", CONFIG_FILE, r"cannot read config file .*folder as config\.toml: Is a directory"),
    ("empty space.toml", SPACE_FILE, r"empty space\.toml: space file is empty"),
    ("random space.toml", SPACE_FILE, r"random space\.toml: not a TOML space file \(binary, not UTF-8 text\)"),
    ("text space.toml", SPACE_FILE, r"text space\.toml: not valid TOML"),
    ("truncated space.toml", SPACE_FILE, r"truncated space\.toml: not valid TOML"),
    ("shard as space.toml", SPACE_FILE, r"not a TOML space file \(binary, not UTF-8 text\)"),
    ("checkpoint as space.toml", SPACE_FILE, r"not a TOML space file \(binary, not UTF-8 text\)"),
    ("config as space.toml", SPACE_FILE, r"config as space\.toml: unknown key 'model' in space file"),

    ("run: empty model file", RUN_FOLDER, r"final_model\.pgolf: the file is empty"),
    ("run: random model file", RUN_FOLDER, r"final_model\.pgolf: not a pgolf model file \(wrong magic\)"),
    ("run: truncated model file", RUN_FOLDER, r"final_model\.pgolf: model file is truncated"),
    ("run: version-9 model file", RUN_FOLDER, r"final_model\.pgolf: unsupported model file version 9"),
    ("run: checkpoint as model file", RUN_FOLDER, r"final_model\.pgolf: .*float checkpoint, not a (quantized )?model file"),
    ("run: model file holding NaN", RUN_FOLDER, r"final_model\.pgolf: tensor blocks\.0\.attn\.c_q\.weight holds NaN"),
    ("run: no metrics.json", RUN_FOLDER, r"run: no metrics\.json is not a pgolf run folder \(no metrics\.json\)"),
    ("run: empty metrics.json", RUN_FOLDER, r"run metrics .*metrics\.json is empty"),
    ("run: random metrics.json", RUN_FOLDER, r"run metrics .*metrics\.json is not JSON: it is binary data"),
    ("run: text metrics.json", RUN_FOLDER, r"run metrics .*metrics\.json is not valid JSON"),
    ("run: truncated metrics.json", RUN_FOLDER, r"run metrics .*metrics\.json is not valid JSON"),
    ("run: metrics.json holding a list", RUN_FOLDER, r"metrics\.json holds a JSON list, not an object"),
    ("run: submission.json as metrics.json", RUN_FOLDER, r"metrics\.json is not the metrics of a pgolf run \(KeyError: 'config'\)"),
    ("run: metrics.json recording NaN", RUN_FOLDER, r"metrics\.json records val_bpb_post nan: not a score to reproduce"),

    ("export: missing folder", EXPORT_FOLDER, r"no such export is not an exported submission: train_gpt\.py is missing"),
    ("export: empty pgolf.json", EXPORT_FOLDER, r"export record .*pgolf\.json is empty"),
    ("export: random pgolf.json", EXPORT_FOLDER, r"export record .*pgolf\.json is not JSON: it is binary data"),
    ("export: text pgolf.json", EXPORT_FOLDER, r"export record .*pgolf\.json is not valid JSON"),
    ("export: pgolf.json holding a list", EXPORT_FOLDER, r"pgolf\.json holds a JSON list, not an object"),
    ("export: submission.json as pgolf.json", EXPORT_FOLDER, r"pgolf\.json is not the record of a pgolf export \(KeyError: 'data'\)"),
    ("export: pgolf.json recording NaN", EXPORT_FOLDER, r"pgolf\.json records val_bpb nan: not a score to verify against"),
    ("export: model file holding NaN", EXPORT_FOLDER,
     r"train_gpt\.py failed to score the model: error: .*final_model\.pgolf: tensor blocks\.0\.attn\.c_q\.weight holds NaN"),

    ("study: empty study.json", STUDY_FOLDER, r"study settings .*study\.json is empty"),
    ("study: random study.json", STUDY_FOLDER, r"study settings .*study\.json is not JSON: it is binary data"),
    ("study: text study.json", STUDY_FOLDER, r"study settings .*study\.json is not valid JSON \(Expecting value"),
    ("study: study.json holding a list", STUDY_FOLDER, r"study settings .*study\.json holds a JSON list, not an object"),
    ("study: metrics.json as study.json", STUDY_FOLDER, r"study\.json is damaged \(.*unexpected keyword argument 'config'\)"),
    ("trial: empty metrics.json", {"search export": STUDY_FOLDER["search export"]}, r"trial 0's metrics .*metrics\.json is empty"),
    ("trial: random metrics.json", {"search export": STUDY_FOLDER["search export"]}, r"trial 0's metrics .*metrics\.json is not JSON: it is binary data"),
    ("trial: truncated metrics.json", {"search export": STUDY_FOLDER["search export"]}, r"trial 0's metrics .*metrics\.json is not valid JSON"),
    ("trial: request.json as metrics.json", {"search export": STUDY_FOLDER["search export"]},
     r"trial 0's metrics\.json lacks 'val_bpb_post': the trial folder was changed"),
    ("trial: random allocation.json", REPORT, r"trial 0's allocation record .*allocation\.json is not JSON: it is binary data"),
    ("trial: metrics.json as allocation.json", REPORT, r"allocation\.json is not an allocation record \(no candidates and best\)"),
]


def _allocate_with(*flags):
    return lambda p, f, out: ("search", ["allocate", p, "--cap", "200000", "--out", out, *flags])


# Matrix storage formats: settings no matrix can be stored with, and model files whose format arrays do not fit.
TABLE += [
    ("config with outliers 0.5.toml", CONFIG_FILE, r"quant\.outliers\['\*'\] = 0\.5: must be a fraction in \[0, 0\.05\]"),
    ("config with rank -1.toml", CONFIG_FILE, r"quant\.rank\['\*'\] = -1: must be an integer in \[0, 64\]"),
    ("config with rank 1000.toml", CONFIG_FILE, r"quant\.rank\['\*'\] = 1000: must be an integer in \[0, 64\]"),
    ("config with quantizer foo.toml", CONFIG_FILE, r"quant\.quantizer\['\*'\] = 'foo': allowed are rtn, gptq"),
    ("space with outliers 0.9.toml", SPACE_FILE,
     r"allocation\.outliers must list fractions in \[0, 0\.05\] of a matrix's weights, got \[0\.0, 0\.9\]"),
    ("space with ranks -2.toml", SPACE_FILE, r"allocation\.ranks must list integers in \[0, 64\], got \[0, -2\]"),
    ("space with quantizer foo.toml", SPACE_FILE, r"allocation\.quantizers must list rtn / gptq, got \['rtn', 'foo'\]"),
    ("good checkpoint", {"search allocate --outliers 0.9": _allocate_with("--outliers", "0.9")},
     r"allocation options: allocation\.outliers must list fractions in \[0, 0\.05\] .*, got \[0\.9\]"),
    ("good checkpoint", {"search allocate --ranks -2": _allocate_with("--ranks", "-2")},
     r"allocation options: allocation\.ranks must list integers in \[0, 64\], got \[-2\]"),
    ("good checkpoint", {"search allocate --quantizers foo": _allocate_with("--quantizers", "foo")},
     r"allocation options: allocation\.quantizers must list rtn / gptq, got \['foo'\]"),
    ("good checkpoint", {"search allocate --rank-bits 4": _allocate_with("--rank-bits", "4")},
     r"allocation options: allocation\.rank_bits must be 8 or 16, got 4"),
    ("run: model file with outlier positions out of range", RUN_FOLDER,
     r"final_model\.pgolf: tensor blocks\.0\.attn\.c_q\.weight: outlier position [\d,]+ is out of range for a 64 x 64 matrix$"),
    ("run: model file with repeated outlier positions", RUN_FOLDER,
     r"final_model\.pgolf: tensor blocks\.0\.attn\.c_q\.weight: outlier positions repeat$"),
    ("run: model file with a low-rank factor of the wrong shape", RUN_FOLDER,
     r"final_model\.pgolf: tensor blocks\.0\.attn\.c_q\.weight: low-rank factors \[64, 4\] x \[4, 63\] do not fit 64 x 64$"),
    ("export: model file with outlier positions out of range", EXPORT_FOLDER,
     r"train_gpt\.py failed to score the model: error: .*final_model\.pgolf: tensor blocks\.0\.attn\.c_q\.weight: "
     r"outlier position [\d,]+ is out of range for a 64 x 64 matrix$"),
]


def cases():
    for file, commands, pattern, *note in TABLE:
        process = note == [PROCESS]
        for command, build in commands.items():
            yield pytest.param(file, command, build, pattern, process, id=f"{file} x {command}" + (" (process)" if process else ""))


MESSAGES = []  # (file, command, the one line), for the printed table


@pytest.fixture(scope="module", autouse=True)
def table(files):
    yield
    root = os.path.dirname(files["marker"]) + "/"  # paths in the table are relative to the files' folder
    if MESSAGES:
        print("\n\n| file | command | message |\n|---|---|---|")
        for file, command, line in MESSAGES:
            print(f"| {file} | `{command}` | `{line.replace(root, '')}` |")


def run_in_process(prog: str, argv: list[str], capsys) -> tuple[int, list[str]]:
    main = pgolf_cli.main if prog == "pgolf" else search_cli.main
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # the parser's refusal: one line and exit 2, as on the command line
        code = exc.code
    except BaseException as exc:  # what a user would see as a traceback
        capsys.readouterr()
        return 99, [f"Traceback: {type(exc).__name__}: {exc}"]
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("file, command, build, pattern, process", list(cases()))
def test_hostile_file_is_one_clear_error(files, file, command, build, pattern, process, tmp_path, capsys):
    prog, argv = build(files[file], files, str(tmp_path / "out"))
    if process:
        done = run_cli(f"{prog}.cli", *argv)
        code, lines = done.returncode, done.stderr.strip().splitlines()
    else:
        code, lines = run_in_process(prog, argv, capsys)
    MESSAGES.append((file, command + (" (process)" if process else ""), lines[0] if len(lines) == 1 else " / ".join(lines)[:300]))
    assert code != 0 and len(lines) == 1, lines
    assert "Traceback" not in lines[0] and re.search(f"^{prog}( [a-z-]+)?: error: .*{pattern}", lines[0]), lines[0]
    assert not os.path.exists(files["marker"])  # the pickle's code never ran
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_evaluation_refuses_a_nonfinite_loss():
    from pgolf.bpb import ByteLuts, load_tokenizer
    from pgolf.shards import validation_tokens

    config = small_config()
    tokens = validation_tokens(os.path.join(SHARDS, "fineweb_val_*.bin"), 64, 1024, limit=4096)
    luts = ByteLuts(load_tokenizer(TOKENIZER, 1024), 1024)
    with pytest.raises(NonFiniteScore, match=r"evaluation loss is nan over 4,096 validation tokens"):
        evaluate_bpb(nan_model(config), tokens, luts, dataclasses.replace(config.resolved_eval(), seq_len=64, autocast=False))


def test_a_trial_with_a_nonfinite_score_fails_with_its_reason(tmp_path, monkeypatch, capsys):
    """The trial process exits non-zero with the reason in error.txt and writes no result: it is never ranked."""
    from search import trial as trial_module
    from space.spec import Caps, allocation_from_dict

    from pgolf.shards import read_shard, write_shard

    config = small_config()
    write_shard(str(tmp_path / "fineweb_val_000000.bin"), read_shard(os.path.join(SHARDS, "fineweb_val_000000.bin"))[:8193])
    data = DataPaths(os.path.join(SHARDS, "fineweb_train_*.bin"), str(tmp_path / "fineweb_val_*.bin"), TOKENIZER, 1024)
    request = {"config": config_to_dict(config), "data": dataclasses.asdict(data), "trial_number": 0, "study": STUDY,
               "caps": dataclasses.asdict(Caps(artifact_bytes=1_000_000, train_seconds=10.0, eval_seconds=60.0)),
               "allocation": dataclasses.asdict(allocation_from_dict({"bits": [8], "embedding_bits": [8], "clip": [12.85]})),
               "device": "cpu", "pruner": None}
    (tmp_path / "request.json").write_text(json.dumps(request))
    trained = types.SimpleNamespace(steps=1, train_tokens=1024, train_seconds=0.1, stopped_by="iterations")
    # Training that ends with weights holding NaN (the loss check of training let them through).
    import pgolf.submission  # the pipeline every trial runs trains through it

    monkeypatch.setattr(pgolf.submission, "train_model", lambda config, *a, **k: (nan_model(config), trained))
    monkeypatch.setattr("sys.argv", ["search.trial", str(tmp_path)])
    assert trial_module.main() == 1
    # The first score after training is the float model's on the reports' validation subset (val_tokens).
    assert f"NonFiniteScore: evaluation loss is nan over {config.train.val_tokens:,} validation tokens" in (tmp_path / "error.txt").read_text()
    assert "trial failed: NonFiniteScore: evaluation loss is nan" in capsys.readouterr().err
    assert not (tmp_path / "result.json").exists()
