"""pgolf/shapes.py: a model's tensors without drawing its weights, as the byte predictor and the importer read them."""

import torch

from pgolf.config import ModelConfig
from pgolf.model import GPT
from pgolf.shapes import unfilled_state


def test_unfilled_state_has_the_models_names_shapes_and_dtypes_and_draws_nothing():
    configs = [ModelConfig(vocab_size=1024, num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1),
               ModelConfig(vocab_size=512, num_layers=3, model_dim=32, num_heads=2, num_kv_heads=2, tie_embeddings=False,
                           loop_start=1, loop_len=1, loop_repeats=2)]
    for config in configs:
        rng = torch.random.get_rng_state()
        state = unfilled_state(config)
        assert torch.equal(rng, torch.random.get_rng_state())  # no draw: the caller's random stream is as it was
        with torch.device("meta"):
            expected = GPT(config).state_dict()
        assert list(state) == list(expected)
        assert all(state[k].shape == expected[k].shape and state[k].dtype == expected[k].dtype for k in expected)
