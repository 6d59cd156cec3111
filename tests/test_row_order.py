"""Free row orderings (pgolf/row_order.py): the units' stored order is free, the function and the score are not moved."""

import dataclasses

import numpy as np
import torch

from pgolf.artifact import pack, unpack
from pgolf.model import GPT
from pgolf.row_order import canonical_order, similar_order, unit_pairs
from pgolf.submission import Runtime, load_model, model_meta, pack_stored, quantize_model

from conftest import small_config

CPU = Runtime(device=torch.device("cpu"))


def trained_like(**quant):
    config = small_config(quant=dict(bits={"*": 6}, clip={"*": 12.85}, keep_float_max_numel=0, **quant))
    torch.manual_seed(0)
    model = GPT(config.model)
    with torch.no_grad():
        for p in model.parameters():  # proj matrices start at zero: give every matrix values to order
            p.copy_(torch.randn_like(p) * 0.05)
    return model, config


def units(stored, i, j):
    fc, proj = stored[i], stored[j]
    return sorted(tuple(fc.q[u]) + (float(fc.scale[u]),) + tuple(proj.q[:, u]) for u in range(fc.q.shape[0]))


def test_orders_are_permutations_and_the_canonical_one_ignores_the_stored_order():
    model, config = trained_like()
    stored = quantize_model(model, config)
    pairs = unit_pairs(stored)
    assert len(pairs) == config.model.num_layers
    similar = similar_order(stored)
    shuffled = list(stored)
    rng = np.random.default_rng(0)
    for i, j in pairs:
        order = rng.permutation(stored[i].q.shape[0])
        shuffled[i] = dataclasses.replace(stored[i], q=stored[i].q[order], scale=stored[i].scale[order])
        shuffled[j] = dataclasses.replace(stored[j], q=stored[j].q[:, order])
    for i, j in pairs:
        assert units(similar, i, j) == units(stored, i, j)  # the same units, moved whole
    assert not all(np.array_equal(a.q, b.q) for a, b in zip(similar, stored) if a.kind == "int")
    for variant in (similar, shuffled):
        for a, b in zip(canonical_order(variant), canonical_order(stored)):
            assert a.name == b.name and (a.q is None or (np.array_equal(a.q, b.q) and np.array_equal(a.scale, b.scale)))


def test_a_file_scores_the_same_to_the_last_bit_whichever_order_it_holds():
    model, config = trained_like(row_order="similar", compressor="lzma", level=9)
    stored = quantize_model(model, config)
    meta = model_meta(config)
    as_trained, _ = pack(stored, meta, "lzma", 9)
    reordered, _ = pack(similar_order(stored), meta, "lzma", 9)
    assert as_trained != reordered
    tokens = torch.randint(0, config.model.vocab_size, (2, 65), generator=torch.Generator().manual_seed(1))
    losses = []
    for blob in (as_trained, reordered):
        loaded, _, _ = load_model(blob, CPU.device)
        with torch.no_grad():
            losses.append(loaded(tokens[:, :-1], tokens[:, 1:]).item())
    assert losses[0] == losses[1]
    off_config = dataclasses.replace(config, quant=dataclasses.replace(config.quant, row_order="off"))
    plain, _, _ = load_model(pack_stored(stored, off_config)[0], CPU.device)
    with torch.no_grad():
        off_loss = plain(tokens[:, :-1], tokens[:, 1:]).item()
    assert abs(off_loss - losses[0]) < 1e-5  # the same function; only the sum over hidden units runs in another order


def test_the_packer_keeps_the_smaller_order_and_off_is_unchanged():
    model, config = trained_like(compressor="lzma", level=9)
    stored = quantize_model(model, config)
    i, j = unit_pairs(stored)[0]
    # Every unit twice, the copies scattered: the chain puts each next to its copy, where lzma codes it as a match.
    fc, proj = stored[i], stored[j]
    order = np.random.default_rng(0).permutation(fc.q.shape[0]) % (fc.q.shape[0] // 2)
    stored[i] = dataclasses.replace(fc, q=fc.q[order], scale=fc.scale[order])
    stored[j] = dataclasses.replace(proj, q=proj.q[:, order])
    off, _ = pack_stored(stored, config)
    assert off == pack(stored, model_meta(config), "lzma", 9)[0] and "row_order" not in unpack(off)[0]
    on_config = dataclasses.replace(config, quant=dataclasses.replace(config.quant, row_order="similar"))
    on, sizes = pack_stored(stored, on_config)
    assert len(on) < len(off) - 500 and sum(sizes.values()) == len(on)
    assert unpack(on)[0]["row_order"] == "similar"
    # In general the file holds whichever of the two orders codes smaller.
    plain = quantize_model(model, config)
    written = unpack(pack_stored(plain, on_config)[0])[1]
    sizes = {len(pack(s, model_meta(on_config), "lzma", 9)[0]): s for s in (similar_order(plain), plain)}
    kept = sizes[min(sizes)]
    assert all(a.q is None or np.array_equal(a.q, b.q) for a, b in zip(written, kept))


def test_mlps_with_more_than_two_matrices_or_format_arrays_are_left_alone():
    model, config = trained_like()
    stored = quantize_model(model, config)
    i, j = unit_pairs(stored)[0]
    with_channels = list(stored)
    with_channels[j] = dataclasses.replace(stored[j], col_scale=np.ones(stored[j].q.shape[1], np.float16))
    assert (i, j) not in unit_pairs(with_channels)
    prefix = stored[i].name[: -len("fc.weight")]
    extra = list(stored) + [dataclasses.replace(stored[i], name=prefix + "fc.lora_a.0.weight")]
    assert (i, j) not in unit_pairs(extra)
