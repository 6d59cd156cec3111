"""Score-first test-time training (pgolf/ttt.py) and the legality check (search/submit/legality.py): TTT off changes
nothing, TTT at learning rate 0 is the sliding window, no loss ever depends on a later token (and the check
that says so fails on adapt-then-score), and a TTT study trial exports, verifies and passes the check."""

import dataclasses
import json
import os
import re
import shutil
import types

import pytest
import torch

import pgolf.evaluate
from pgolf.checkpoint import load_any_checkpoint
from pgolf.config import EvalConfig, config_from_dict, eval_settings
from pgolf.evaluate import Trace
from pgolf.model import GPT, full_precision
from pgolf.shards import validation_tokens
from pgolf.submission import Runtime, score_tokens
from search.submit.legality import model_file_settings

from broken_evals import ADAPT_THEN_SCORE, GLOBAL_PHASE_ON_UNSCORED, patched
from conftest import DATA, VAL_PATTERN, run_cli, sample_luts

CPU = Runtime(device=torch.device("cpu"))
OFFICIAL = os.path.join(DATA, "official_tiny", "final_model.pt")
MICRO_TTT = os.path.join(os.path.dirname(__file__), "spaces", "micro_ttt.toml")


@pytest.fixture(scope="module")
def official():
    model, config = load_any_checkpoint(OFFICIAL, 256)
    return full_precision(model), dataclasses.replace(config.resolved_eval(), autocast=False, batch_tokens=4096)


def losses(model, evaluation, tokens) -> torch.Tensor:
    trace = Trace(tokens.numel() - 1)
    score_tokens(model, evaluation, tokens, sample_luts(), CPU, trace)
    assert (trace.count == 1).all()
    return trace.nll


def test_bad_ttt_settings_are_named_in_one_line():
    for sets, message in ((["eval.ttt=lora", "eval.ttt_chunk=2048"], r"eval.ttt_chunk 2048 must be between 1 and the eval sequence length"),
                          (["eval.ttt=lora", "eval.ttt_rank=0"], r"eval.ttt_rank must be in \[1, 256\] with eval.ttt = lora"),
                          (["eval.ttt=lora", "eval.ttt_lr=-0.01"], r"eval.ttt_lr must be a non-negative learning rate"),
                          (["eval.ttt=sometimes"], r"eval.ttt must be one of off, lora, full")):
        done = run_cli("pgolf.cli", "run", "tiny", *[a for s in sets for a in ("--set", s)])
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1 and re.search(message, lines[0]), done.stderr


def test_model_files_record_ttt_keys_only_when_ttt_is_on():
    assert not any(k.startswith("ttt") for k in eval_settings(EvalConfig()))
    assert eval_settings(EvalConfig(ttt="lora"))["ttt_chunk"] == 256


def test_ttt_at_learning_rate_zero_scores_exactly_as_the_sliding_window(official):
    model, evaluation = official
    tokens = validation_tokens(VAL_PATTERN, 256, 1024, 4096)
    sliding = score_tokens(model, dataclasses.replace(evaluation, stride=64), tokens, sample_luts(), CPU)
    # One stream carried on (per document, windows would not read across a BOS, unlike the sliding window)
    frozen = score_tokens(model, dataclasses.replace(evaluation, stride=64, ttt="lora", ttt_lr=0.0, ttt_chunk=128,
                                                     ttt_reset="never"), tokens, sample_luts(), CPU)
    assert frozen.tokens == sliding.tokens and abs(frozen.bpb - sliding.bpb) < 1e-7


SETTINGS = {
    "chunks": {},
    "sliding": dict(stride=64),
    "ttt lora per document": dict(ttt="lora", ttt_chunk=64, ttt_steps=2),
    "ttt lora carried, phased": dict(ttt="lora", ttt_chunk=64, ttt_reset="never", ttt_phase_tokens=256, stride=32),
    "ttt full tensors": dict(ttt="full", ttt_targets=["*.mlp.proj.weight"], ttt_chunk=128, ttt_optimizer="sgd", ttt_lr=0.1),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_no_loss_depends_on_a_later_token(official, name):
    model, evaluation = official
    evaluation = dataclasses.replace(evaluation, **SETTINGS[name])
    base = validation_tokens(VAL_PATTERN, 256, 1024, 768)
    before = losses(model, evaluation, base)
    generator = torch.Generator().manual_seed(0)
    # 262 lies in the last, partial chunk of the first document and removes the BOS that ends it (at 273): a
    # window that read from where its document ends would give targets 256-261 other context.
    for p in (100, 262, 300, 641):
        changed = base.clone()
        changed[p:] = torch.randint(2, 1024, (base.numel() - p,), generator=generator)
        after = losses(model, evaluation, changed)
        # Within the legality check's tolerance, not bitwise: the perturbation removes the BOS at 273, so with
        # per-document adaptation fewer documents share a batch, and kernels of another shape round differently
        # (seen: 4e-6 nats; with the BOS kept it is bitwise).
        assert torch.allclose(after[: p - 1], before[: p - 1], rtol=0, atol=1e-4), (name, p)
        assert not torch.equal(after[p:], before[p:])  # the perturbation reached the model
    if evaluation.ttt != "off":  # and adaptation changed the scores (the check is not about a no-op)
        assert not torch.allclose(before, losses(model, dataclasses.replace(evaluation, ttt="off"), base))


def test_a_looped_model_adapts_legally_at_a_deeper_unroll():
    torch.manual_seed(0)
    config = config_from_dict({"model": dict(vocab_size=1024, num_layers=3, model_dim=64, num_heads=2, num_kv_heads=1,
                                             loop_start=1, loop_len=1, loop_repeats=2, loop_lora_rank=2),
                               "train": dict(seq_len=128, batch_tokens=1024),
                               "eval": dict(repeats=3, ttt="lora", ttt_chunk=32, ttt_lr=0.05, autocast=False)})
    model = full_precision(GPT(config.model))
    evaluation = config.resolved_eval()
    base = validation_tokens(VAL_PATTERN, 128, 1024, 384)
    before = losses(model, evaluation, base)
    changed = base.clone()
    changed[200:] = 5
    assert torch.allclose(losses(model, evaluation, changed)[:199], before[:199], rtol=0, atol=1e-4)  # BOS at 273 removed


def test_adapt_then_score_is_caught_by_the_same_measurement(official, monkeypatch):
    model, evaluation = official
    evaluation = dataclasses.replace(evaluation, ttt="lora", ttt_chunk=64, ttt_lr=0.05)
    broken = types.ModuleType("broken_ttt")
    with open(pgolf.evaluate.__file__.replace("evaluate.py", "ttt.py"), encoding="utf-8") as f:
        exec(compile(patched(f.read(), ADAPT_THEN_SCORE), "broken_ttt.py", "exec"), broken.__dict__)
    monkeypatch.setattr(pgolf.evaluate, "eval_ttt", broken.eval_ttt)
    base = validation_tokens(VAL_PATTERN, 256, 1024, 512)
    changed = base.clone()
    changed[100:] = 7  # inside the second chunk: its first targets were adapted on with the new tokens
    # The criterion the legal evaluations pass above, failed by far more than its tolerance.
    after, before = losses(model, evaluation, changed)[:99], losses(model, evaluation, base)[:99]
    assert not torch.allclose(after, before, rtol=0, atol=1e-4)
    assert float((after - before).abs().max()) > 1e-2


def test_the_trace_holds_a_normalised_distribution_that_gives_the_scored_loss(official):
    model, evaluation = official
    evaluation = dataclasses.replace(evaluation, ttt="lora", ttt_chunk=64)
    tokens = validation_tokens(VAL_PATTERN, 256, 1024, 256)
    trace = Trace(256, positions=[70, 200])
    score_tokens(model, evaluation, tokens, sample_luts(), CPU, trace)
    for t in (70, 200):
        assert abs(float(torch.exp(-trace.dist[t]).sum()) - 1) < 1e-6  # fp32 log-probabilities (seen: 4e-8 off)
        assert float(trace.dist[t][tokens[t + 1]]) == pytest.approx(float(trace.nll[t]), abs=1e-6)


def study_export(space: str, study: str, results, out) -> str:
    """A one-trial study of `space` run into `results`, then exported (legality check included) to `out`; what the
    export printed."""
    done = run_cli("search.cli", "run", "--space", space, "--study", study, "--trials", "1", "--sampler-seed", "0",
                   "--results", str(results))
    assert done.returncode == 0, done.stderr + done.stdout
    exported = run_cli("search.cli", "export", study, "--out", str(out), "--results", str(results))
    assert exported.returncode == 0, exported.stderr + exported.stdout
    return exported.stdout


def legality_of_broken_copy(out, folder, patch: tuple[str, str]):
    """`search verify --legality` on a copy of the export `out` whose script has `patch` applied (broken_evals.py)."""
    broken = folder / "broken"
    shutil.copytree(out, broken)
    script = broken / "train_gpt.py"
    script.write_text(patched(script.read_text(), patch))
    return run_cli("search.cli", "verify", "--legality", str(broken))


@pytest.fixture(scope="module")
def ttt_export(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    out = tmp_path_factory.mktemp("export") / "ttt"
    return results, out, study_export(MICRO_TTT, "t", results, out)


def test_a_ttt_trial_exports_with_its_legality_lines_and_verifies_exactly(ttt_export):
    results, out, printed = ttt_export
    for condition in ("C1 causal: pass", "C2 normalised: pass", "C3 score before update: pass", "C4 scored once: pass"):
        assert condition in printed and condition in (out / "README.md").read_text()
    assert json.loads((out / "pgolf.json").read_text())["legality"]
    script = (out / "train_gpt.py").read_text()
    assert "def eval_ttt(" in script and "ttt_chunk" in script
    allocation = json.loads((results / "t" / "trials" / "0000" / "allocation.json").read_text())
    assert [m["setting"] for m in allocation["ttt"]] == ["no TTT", "TTT lora chunk 64 rank 4"]
    verified = run_cli("search.cli", "verify", str(out))
    assert verified.returncode == 0 and "difference 0.0e+00" in verified.stdout, verified.stderr
    # The trial's model re-scored without TTT gives another score; with its own settings, the same one.
    trial = results / "t" / "trials" / "0000"
    same, off = run_cli("pgolf.cli", "eval", str(trial)), run_cli("pgolf.cli", "eval", str(trial), "--set", "eval.ttt=off")
    assert same.returncode == 0 and "identical" in same.stdout, same.stderr
    assert off.returncode == 0 and "with eval.ttt=off: differs" in off.stdout, off.stderr


def test_the_legality_check_rejects_an_export_that_adapts_before_scoring(ttt_export, tmp_path):
    _, out, _ = ttt_export
    done = legality_of_broken_copy(out, tmp_path, ADAPT_THEN_SCORE)
    assert done.returncode == 1, done.stderr
    assert "C3 score before update: FAIL" in done.stdout and "C4 scored once: pass" in done.stdout, done.stdout
    assert re.search(r"fails .*C3 score before update", done.stdout)


@pytest.fixture(scope="module")
def phased_export(tmp_path_factory):
    """An export of the micro TTT space with phased global TTT on: the global phase's prefix ends at target 96."""
    folder = tmp_path_factory.mktemp("phased")
    with open(MICRO_TTT, encoding="utf-8") as f:
        text = f.read()
    assert "[base.eval]\nbatch_tokens = 16384\n" in text
    space = folder / "micro_phased.toml"
    space.write_text(text.replace("[base.eval]\nbatch_tokens = 16384\n", "[base.eval]\nbatch_tokens = 16384\nttt_global_tokens = 96\n"))
    out = folder / "export"
    return out, study_export(str(space), "p", folder / "results", out)


def test_a_phased_global_ttt_export_passes_the_legality_check_and_one_adapting_on_unscored_text_fails_c1(phased_export, tmp_path):
    out, printed = phased_export
    config = json.loads((out / "pgolf.json").read_text())
    _, evaluation = model_file_settings(str(out))  # what the model file tells its script to evaluate with
    assert evaluation.ttt == "lora" and evaluation.ttt_global_tokens == 96
    for condition in ("C1 causal: pass", "C2 normalised: pass", "C3 score before update: pass", "C4 scored once: pass"):
        assert condition in printed, printed
    assert config["legality"]
    done = legality_of_broken_copy(out, tmp_path, GLOBAL_PHASE_ON_UNSCORED)
    assert done.returncode == 1, done.stderr
    assert "C1 causal: FAIL" in done.stdout, done.stdout
