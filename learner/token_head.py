"""Log-probabilities of chosen tokens through the LM head, a chunk of positions at a time.

The head of a Qwen-VL model maps each hidden state to ~152k vocabulary logits. Evaluating it on
every scored position at once holds the (N, V) logits in float32, their log-softmax (kept for the
backward pass) and the entropy's temporaries, each N x 152k x 4 bytes. In the H200 learner benchmark
(Qwen3-VL-2B shapes, 64k-token micro-batches, some blocks not checkpointed) the step ran out of
memory in the entropy, asking for 12.3 GiB more.

Here the positions go through the head in chunks of `chunk_tokens`. With gradients on and more
than one chunk, each chunk runs under non-reentrant activation checkpointing, so only its (chunk, H)
hidden rows are kept and the chunk's logits are recomputed in the backward pass (one more head
matmul over the scored tokens). `chunk_tokens=0` evaluates all positions at once, kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class TokenScores:
    """Per-position results, (B, T) like the input ids, zero where no token was scored."""

    logp: torch.Tensor                   # log-prob of input_ids[b, t] given hidden[b, t-1]
    entropy: torch.Tensor | None = None  # entropy of that next-token distribution (no gradient)
    top1: torch.Tensor | None = None     # bool: input_ids[b, t] is the distribution's argmax


def _chunk_scores(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, with_entropy: bool,
                  with_top1: bool):
    logp_all = torch.log_softmax(head(hidden).float(), dim=-1)
    picked = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    ent = top1 = None
    with torch.no_grad():
        if with_entropy:
            ent = -(logp_all.exp() * logp_all).sum(-1)
        if with_top1:
            top1 = logp_all.argmax(-1) == targets
    return picked, ent, top1


def score_tokens(head: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor, select: torch.Tensor,
                 chunk_tokens: int = 0, with_entropy: bool = False, with_top1: bool = False) -> TokenScores:
    """Score ids[b, t] for every (b, t) where `select` is true (position 0 never: nothing predicts
    it) from hidden[b, t-1]. `hidden` is (B, T, H); the full (B, T, V) logits never exist."""
    if chunk_tokens < 0:
        raise ValueError(f"chunk_tokens must be >= 0, got {chunk_tokens}")
    select = select.clone()
    select[:, 0] = False
    b, t = select.nonzero(as_tuple=True)
    rows, targets = hidden[b, t - 1], input_ids[b, t]
    n = rows.shape[0]
    step = chunk_tokens if chunk_tokens > 0 else max(n, 1)
    # One chunk's worth is kept as is: at most chunk x V floats, and no second head pass.
    recompute = 0 < chunk_tokens < n and torch.is_grad_enabled()
    parts = []
    for start in range(0, n, step) or [0]:  # an empty selection still yields a graph (zero gradient)
        args = (head, rows[start:start + step], targets[start:start + step], with_entropy, with_top1)
        parts.append(checkpoint(_chunk_scores, *args, use_reentrant=False) if recompute else _chunk_scores(*args))

    def scatter(values, dtype):
        return torch.zeros(select.shape, dtype=dtype, device=hidden.device).index_put((b, t), values)

    def joined(i):
        return torch.cat([p[i] for p in parts])

    return TokenScores(
        logp=scatter(joined(0), torch.float32),
        entropy=scatter(joined(1), torch.float32) if with_entropy else None,
        top1=scatter(joined(2).bool(), torch.bool) if with_top1 else None)
