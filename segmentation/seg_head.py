"""The [SEG] projector: LLM hidden state (H) -> SAM2 prompt token (256).

Two linear layers with a ReLU between, H -> H -> 256 (METHOD.md section 1). The reward pool owns a
copy (it receives raw H-dim hidden states and projects them itself) and the learner trains one;
both are built here so their parameter names agree and `update_weights` can move one into the
other without renaming.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# Checkpoints written by Sa2VA-style code name the same two layers differently.
FOREIGN_PREFIXES = ("text_hidden_fcs.", "projector.", "seg_projector.")


class SegProjector(nn.Module):
    """Projects the last-layer hidden state at a [SEG] position to one SAM2 sparse prompt token."""

    def __init__(self, hidden_size: int, out_dim: int = 256):
        super().__init__()
        if hidden_size < 1 or out_dim < 1:
            raise ValueError(f"projector sizes must be positive, got H={hidden_size}, out={out_dim}")
        self.hidden_size = hidden_size
        self.out_dim = out_dim
        # Indices 0 and 2 hold the weights, so the state-dict keys match the common Sequential layout.
        self.layers = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(),
                                    nn.Linear(hidden_size, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Variance-preserving init: unit-RMS hidden states give unit-RMS prompt tokens.

        SAM2's own prompt tokens (point embedding plus positional encoding) have about unit RMS per
        channel. nn.Linear's default init would give a fresh projector tokens of RMS ~0.2, which the
        decoder's attention all but ignores (measured: mask probabilities moved by 0.001 between
        different [SEG] states, 0.17 at unit RMS), and mask training then settles on a
        prompt-independent mask. He init before the ReLU, LeCun init after it, zero biases."""
        first, last = self.layers[0], self.layers[2]
        nn.init.kaiming_normal_(first.weight, nonlinearity="relu")
        nn.init.normal_(last.weight, std=self.hidden_size ** -0.5)
        nn.init.zeros_(first.bias)
        nn.init.zeros_(last.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"[SEG] hidden states have width {hidden.shape[-1]}, projector expects "
                             f"{self.hidden_size}")
        return self.layers(hidden.to(self.layers[0].weight.dtype))


def build_projector(hidden_size: int, out_dim: int = 256, checkpoint: str | Path | None = None,
                    seed: int = 0) -> SegProjector:
    """A projector with weights from `checkpoint` (safetensors or torch file), else a seeded init.

    The seeded init makes every process that builds a fresh projector (pool replicas, learner)
    start from the same weights without shipping them around.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        proj = SegProjector(hidden_size, out_dim)
    if checkpoint is not None:
        proj.load_state_dict(read_projector_state(checkpoint))
    return proj


def read_projector_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"projector checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return normalise_projector_keys(state)


def normalise_projector_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map 'text_hidden_fcs.0.weight' / '0.weight' / 'layers.0.weight' to this module's names."""
    out = {}
    for key, value in state.items():
        for prefix in FOREIGN_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if not key.startswith("layers."):
            key = "layers." + key
        out[key] = value
    return out
