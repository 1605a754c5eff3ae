"""learner.compile_blocks: which modules get compiled (no compile runs here; the integration test
tests/integration/test_learner_core.py checks a compiled policy trains like the eager one)."""

import pytest
from torch import nn

from learner.compile_blocks import compile_blocks, repeated_blocks


class ToyVisionBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Linear(4, 4)


class ToyDecoderLayer(nn.Module):
    def __init__(self, nested: bool = False):
        super().__init__()
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
