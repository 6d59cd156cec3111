"""quant.code = "compressed": trials count, and exports ship, the self-extracting form of the assembled script."""

import dataclasses
import json
import re
import shutil

import pytest

from conftest import MICRO_SPACE, TOKENIZER, run_cli
from pgolf.assemble import READABLE_FILE, assemble_script, code_bytes, counted_script, write_script
from pgolf.config import ConfigError, config_from_dict, config_to_dict
from pgolf.configfiles import resolve_config
from pgolf.selfextract import build_source
from test_export import SHARDS, one_error_line


def compressed(config):
    return dataclasses.replace(config, quant=dataclasses.replace(config.quant, code="compressed"))


def test_the_counted_form_is_the_one_code_bytes_measures_and_plain_is_unchanged(tmp_path):
    plain, packed = config_to_dict(resolve_config("tiny")), config_to_dict(compressed(resolve_config("tiny")))
    assert "'code'" not in assemble_script(plain)  # the plain script is what it was before the key existed
    assert assemble_script(packed) == assemble_script(plain)  # the same program either way
    assert code_bytes(plain) == len(assemble_script(plain).encode("utf-8"))
    assert code_bytes(packed) == len(counted_script(packed).encode("utf-8")) < code_bytes(plain) // 3
    assert write_script(str(tmp_path), packed) == code_bytes(packed) == (tmp_path / "train_gpt.py").stat().st_size
    readable = (tmp_path / READABLE_FILE).read_text()
    assert readable.startswith("# NOT COUNTED AND NOT WHAT RUNS")
    assert build_source(readable, "train_gpt.py").loader == (tmp_path / "train_gpt.py").read_text()
    # The template is stripped once and each config's line alone: the same loader as stripping the whole script.
    coded = compressed(resolve_config("frontier_tiny"))
    coded = dataclasses.replace(coded, quant=dataclasses.replace(coded.quant, compressor="rans", bits={"*": 6, "blocks.0.*": 5}))
    assert counted_script(config_to_dict(coded)) == build_source(assemble_script(config_to_dict(coded)), "train_gpt.py").loader
    with pytest.raises(ConfigError, match="quant.code must be one of plain, compressed, got 'zip'"):
        config_from_dict({"quant": {"code": "zip"}})


@pytest.fixture(scope="module")
def compressed_export(tmp_path_factory):
    """A one-trial micro study whose code is counted compressed, exported (legality checked on the way); forced, as a
    loaded machine can push the 3 s training cap (what is tested is the code, not the timing)."""
    root = tmp_path_factory.mktemp("compressed")
    with open(MICRO_SPACE, encoding="utf-8") as f:
        space = f.read().replace('name = "micro"', 'name = "micro_compressed"') + '\n[base.quant]\ncode = "compressed"\n'
    (root / "space.toml").write_text(space)
    results = root / "results"
    done = run_cli("search.cli", "run", "--space", str(root / "space.toml"), "--study", "c", "--trials", "1",
                   "--sampler-seed", "0", "--results", str(results))
    assert done.returncode == 0, done.stderr + done.stdout
    out = root / "submission"
    done = run_cli("search.cli", "export", "c", "--trial", "0", "--force", "--out", str(out), "--results", str(results))
    assert done.returncode == 0, done.stderr
    return results, out


def test_the_compressed_export_counts_the_loader_and_scores_as_its_readable_source(compressed_export):
    results, out = compressed_export
    metrics = json.loads((results / "c" / "trials" / "0000" / "metrics.json").read_text())
    loader = (out / "train_gpt.py").read_text()
    assert loader.startswith("import lzma as L,base64 as B\n") and loader.count("\n") == 2
    assert (out / "train_gpt.py").stat().st_size == metrics["code_bytes"] == json.loads((out / "submission.json").read_text())["bytes_code"]
    assert metrics["code_bytes"] == code_bytes(metrics["config"]) < 60_000
    assert json.loads((out / "pgolf.json").read_text())["code_form"] == "compressed"
    env = {"EVAL_ONLY": "1", "MODEL_PATH": str(out / "final_model.pgolf"), "DATA_PATH": SHARDS, "TOKENIZER_PATH": TOKENIZER,
           "PYTHONPATH": "", "DEVICE": "cpu"}
    scores = []
    for script in ("train_gpt", READABLE_FILE[:-3]):
        done = run_cli(script, cwd=out, env=env)
        assert done.returncode == 0, done.stderr
        scores.append(re.search(r"final_roundtrip_exact .*", done.stdout).group(0))
    assert scores[0] == scores[1]
    done = run_cli("search.cli", "verify", str(out))
    assert done.returncode == 0, done.stderr
    assert "difference 0.0e+00" in done.stdout


def test_verify_refuses_a_loader_that_is_not_its_readable_source(compressed_export, tmp_path):
    _, out = compressed_export
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    source = edited / READABLE_FILE
    source.write_text(source.read_text().replace("def ", "def  ", 1) + "\nX = 1\n")
    one_error_line(run_cli("search.cli", "verify", str(edited)), r"train_gpt.py is not the self-extracting form of train_gpt_source.py")
    grown = tmp_path / "grown"
    shutil.copytree(out, grown)
    with open(grown / "train_gpt.py", "a", encoding="utf-8") as f:
        f.write("\n")
    one_error_line(run_cli("search.cli", "verify", str(grown)), r"train_gpt.py holds [\d,]+ bytes, not the [\d,]+ the trial counted")
