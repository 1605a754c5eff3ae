"""learner.blocks: which modules get compiled and which keep gradient checkpointing (no compile or
backward runs here; tests/integration/test_learner_core.py checks both train like the plain policy)."""

import pytest
from torch import nn

from learner.blocks import checkpoint_fraction, compile_blocks, repeated_blocks


class ToyVisionBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Linear(4, 4)
        self.gradient_checkpointing = True


class ToyDecoderLayer(nn.Module):
    def __init__(self, nested: bool = False):
        super().__init__()
        self.gradient_checkpointing = True
        self.mlp = nn.Linear(4, 4)
        self.inner = ToyVisionBlock() if nested else nn.Identity()


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = nn.ModuleList([ToyVisionBlock() for _ in range(2)])
        self.layers = nn.ModuleList([ToyDecoderLayer(nested=True) for _ in range(3)])
        self.norm = nn.LayerNorm(4)


def test_blocks_are_found_outermost_first():
    model = ToyModel()
    blocks = repeated_blocks(model)
    assert blocks == [*model.visual, *model.layers]  # the block nested in a layer is covered by it


def test_compile_marks_every_block_and_keeps_parameter_names():
    model = ToyModel()
    names = [n for n, _ in model.named_parameters()]
    assert compile_blocks(model) == 5
    assert all(b._compiled_call_impl is not None for b in repeated_blocks(model))
    assert model.norm._compiled_call_impl is None
    assert [n for n, _ in model.named_parameters()] == names


def test_a_model_without_blocks_is_refused():
    with pytest.raises(ValueError, match="learner.compile_blocks=false"):
        compile_blocks(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize("fraction, vision, layers", [
    (1.0, [True, True], [True, True, True]),
    (0.0, [False, False], [False, False, False]),
    (0.5, [False, True], [False, True, False]),
    (2 / 3, [False, True], [False, True, True]),
])
def test_checkpointing_is_kept_on_an_evenly_spread_fraction_of_each_stack(fraction, vision, layers):
    model = ToyModel()
    kept = checkpoint_fraction(model, fraction)
    assert [b.gradient_checkpointing for b in model.visual] == vision
    assert [b.gradient_checkpointing for b in model.layers] == layers
    assert kept == sum(vision) + sum(layers)


def test_checkpoint_fraction_out_of_range_or_without_a_switch_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        checkpoint_fraction(ToyModel(), 1.5)
    model = ToyModel()
    del model.layers[0].gradient_checkpointing
    with pytest.raises(ValueError, match="no gradient_checkpointing switch"):
        checkpoint_fraction(model, 0.5)
