"""block_diagonal_attention against one attention call per block (what transformers does)."""

import pytest
import torch
import torch.nn.functional as F

from learner.vision_attention import block_diagonal_attention


def per_block(q, k, v, cu, scale):
    outs = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if b > a:
            blk = [t[a:b].transpose(0, 1)[None] for t in (q, k, v)]
            outs.append(F.scaled_dot_product_attention(*blk, scale=scale)[0].transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("lengths", [[16, 16, 16], [16, 9, 16, 0, 4, 9], [7]])
def test_matches_per_block_attention_values_and_gradients(lengths):
    torch.manual_seed(0)
    tokens, heads, dim = sum(lengths), 3, 8
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    base = [torch.randn(tokens, heads, dim, dtype=torch.float64) for _ in range(3)]
    a = [t.clone().requires_grad_() for t in base]
    b = [t.clone().requires_grad_() for t in base]
    out_a = block_diagonal_attention(*a, cu, 0.3)
    out_b = per_block(*b, cu, 0.3)
    torch.testing.assert_close(out_a, out_b)
    weight = torch.randn_like(out_a)
    (out_a * weight).sum().backward()
    (out_b * weight).sum().backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad)


def test_tokens_do_not_leak_across_blocks():
    torch.manual_seed(1)
    cu = torch.tensor([0, 5, 10, 13])
    q, k, v = (torch.randn(13, 2, 4) for _ in range(3))
    before = block_diagonal_attention(q, k, v, cu, 0.5)
    v2 = v.clone()
    v2[5:10] += 100.0  # change only the second block's values
    after = block_diagonal_attention(q, k, v2, cu, 0.5)
    torch.testing.assert_close(before[:5], after[:5])
    torch.testing.assert_close(before[10:], after[10:])
    assert not torch.allclose(before[5:10], after[5:10])


@pytest.mark.parametrize("cu", [[0, 5, 12], [1, 6, 10], [0, 7, 5, 10]])
def test_bad_boundaries_are_refused(cu):
    q = torch.zeros(10, 1, 4)
    with pytest.raises(ValueError, match="cu_seqlens"):
        block_diagonal_attention(q, q, q, torch.tensor(cu), 1.0)
