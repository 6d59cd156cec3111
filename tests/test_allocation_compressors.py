"""The allocation and the byte predictor know each compressor: its symbol rate and the code it ships."""

import dataclasses

import pytest
import torch

from conftest import small_config
from objectives.bytes import load_calibration, predict_model_bytes
from pgolf.assemble import code_bytes
from pgolf.config import ConfigError, compressor_missing, config_from_dict, config_to_dict
from pgolf.model import GPT
from search.allocation.allocator import AllocationRequest, _model_budget, _plan_compressor
from search.allocation.candidates import Candidate, pack_candidate
from search.allocation.options import FormatChoices, Option, make_units
from space.core import AllocationSpace, Caps


def with_compressor(config, compressor):
    return dataclasses.replace(config, quant=dataclasses.replace(config.quant, compressor=compressor))


def test_the_predictor_uses_the_compressors_symbol_rate_and_code():
    config, calibration = small_config(quant=dict(bits={"*": 6}, clip={"*": 12.85})), load_calibration()
    zstd, rans = (predict_model_bytes(with_compressor(config, c).model, with_compressor(config, c).quant, calibration)
                  for c in ("zstd", "rans"))
    assert rans < zstd and predict_model_bytes(config.model, with_compressor(config, "lzma").quant, calibration) == zstd
    # rans ships its decoder (pgolf/entropy_codec.py) in the script: its code is counted
    assert code_bytes(config_to_dict(with_compressor(config, "rans"))) > code_bytes(config_to_dict(config)) + 10_000


def request_for(compressors, cap_over_zstd_budget):
    """A small model's allocation request whose cap leaves the zstd plan `cap_over_zstd_budget` bytes of budget."""
    torch.manual_seed(0)
    config = small_config()
    model = GPT(config.model)
    state = model.state_dict()
    units = make_units(state, "layer")
    space = AllocationSpace(compressors=compressors, eval_stride=[0])
    request = AllocationRequest(model, config, space, Caps(artifact_bytes=10_000_000), data=None, runtime=None)
    base = _model_budget(request, state, units, FormatChoices.of(space), 1, "zstd")
    request.caps = Caps(artifact_bytes=10_000_000 - base + cap_over_zstd_budget)
    # Two options a unit: cheap and damaging, or 200 KB and harmless; all five harmless ones need 1,000,000 bytes.
    options = {u.name: [Option(4, 12.85, 1_000, 0.0, damage=1.0), Option(8, 12.85, 200_000, 0.0, damage=0.0)] for u in units}
    return request, state, units, options


def test_the_plan_budgets_with_the_code_and_rate_of_the_compressor_it_chose():
    request, state, units, options = request_for(["zstd", "rans"], 999_000)
    assert len(units) == 5  # the embedding, attention and MLP of two layers
    compressor, planned, budget = _plan_compressor(request, state, units, FormatChoices.of(request.space), 1, options)
    # zstd affords four harmless options in 999,000 bytes; at rans's rate (0.973) all five take 973,000, which fits
    # even after its decoder's ~22 KB of code.
    assert compressor == "rans" and all(opts[1].bytes == 194_600 for opts in planned.values())
    assert budget == _model_budget(request, state, units, FormatChoices.of(request.space), 1, "rans") < 999_000 - 10_000


def test_compressors_that_differ_in_neither_rate_nor_code_plan_as_the_first_alone():
    request, state, units, options = request_for(["zstd", "lzma"], 999_000)
    compressor, planned, budget = _plan_compressor(request, state, units, FormatChoices.of(request.space), 1, options)
    assert compressor == "zstd" and planned is options and budget == 999_000


def test_a_candidate_keeps_the_compressor_with_the_fewest_bytes_counting_its_code():
    torch.manual_seed(0)
    config = small_config(quant=dict(bits={"*": 6}, clip={"*": 12.85}))
    model = GPT(config.model)
    space = AllocationSpace(compressors=["rans", "zstd"], level=22)
    candidate = Candidate("c", config, 0, 0.0)
    pack_candidate(model, candidate, space)
    # A small model: rans codes its symbols smaller, but not by the ~22 KB of decoder it ships in the script.
    assert candidate.config.quant.compressor == "zstd"
    assert candidate.artifact_bytes == len(candidate.blob) + code_bytes(config_to_dict(candidate.config))


def test_brotli_is_refused_in_one_line_when_absent_and_packs_when_present():
    if compressor_missing("brotli"):
        with pytest.raises(ConfigError, match=r"^quant.compressor brotli needs the brotli package, which is not installed"):
            config_from_dict({"quant": {"compressor": "brotli", "level": 11}})
        return
    from pgolf.submission import export_model, load_model

    config = small_config(quant=dict(compressor="brotli", level=11, bits={"*": 6}, clip={"*": 12.85}))
    torch.manual_seed(0)
    model = GPT(config.model)
    blob, _, _ = export_model(model, config)
    restored, _, _ = load_model(blob, torch.device("cpu"))
    zstd_blob, _, _ = export_model(model, with_compressor(dataclasses.replace(config, quant=dataclasses.replace(config.quant, level=22)), "zstd"))
    assert blob != zstd_blob
    via_zstd, _, _ = load_model(zstd_blob, torch.device("cpu"))
    for name, value in via_zstd.state_dict().items():  # the same stored model, whichever coder carried it
        assert torch.equal(restored.state_dict()[name], value), name


def test_search_allocate_offers_every_format_and_installed_compressor_unless_a_flag_narrows_it():
    from pgolf.config import COMPRESSORS
    from pgolf.storage import FORMAT_AXES, QUANTIZERS
    from search.allocation.command import offered_by_default
    from space.spec import allocation_from_dict

    everything = allocation_from_dict(offered_by_default({}))
    assert everything.quantizers == list(QUANTIZERS) and everything.ranks[0] == 0 and len(everything.ranks) > 1
    assert all(len(getattr(everything, a.space_key)) > 1 for a in FORMAT_AXES if a.per_tensor)
    assert everything.compressors == [c for c in COMPRESSORS if compressor_missing(c) is None]
    assert everything.row_orders == ["off", "similar"]
    narrowed = allocation_from_dict(offered_by_default({"quantizers": ["rtn"], "compressors": ["zstd"]}))
    assert narrowed.quantizers == ["rtn"] and narrowed.compressors == ["zstd"] and narrowed.awq == everything.awq
