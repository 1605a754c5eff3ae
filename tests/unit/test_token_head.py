"""Chunked, recomputed LM-head scoring (learner/token_head.py) against the plain full-logits path."""

import pytest
import torch
from torch import nn

from learner.token_head import score_tokens

B, T, H, V = 3, 11, 16, 97


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(H, V, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g))
    hidden = torch.randn(B, T, H, generator=g, requires_grad=True)
    ids = torch.randint(0, V, (B, T), generator=g)
    select = torch.rand(B, T, generator=g) > 0.4
    select[0, 0] = True  # position 0 must be ignored even when selected
    return head, hidden, ids, select


def _reference(head, hidden, ids, select):
    """The straightforward computation: full logits everywhere, then pick."""
    logp_all = torch.log_softmax(head(hidden).float(), -1)  # (B, T, V), predicts position t+1
    sel = select.clone()
    sel[:, 0] = False
    picked = torch.zeros(B, T)
    picked[:, 1:] = logp_all[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    ent = torch.zeros(B, T)
    ent[:, 1:] = -(logp_all[:, :-1].exp() * logp_all[:, :-1]).sum(-1)
    top1 = torch.zeros(B, T, dtype=torch.bool)
    top1[:, 1:] = logp_all[:, :-1].argmax(-1) == ids[:, 1:]
    return picked * sel, ent.detach() * sel, top1 & sel


@pytest.mark.parametrize("chunk", [0, 1, 3, 7, 1000])
def test_matches_full_logits_values_and_gradients(chunk):
    head, hidden, ids, select = _inputs()
    weights = torch.randn(B, T)  # an arbitrary downstream loss
    ref_logp, ref_ent, ref_top1 = _reference(head, hidden, ids, select)
    (ref_logp * weights).sum().backward()
    ref_gh, ref_gw = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = None
    head.weight.grad = None

    got = score_tokens(head, hidden, ids, select, chunk_tokens=chunk, with_entropy=True, with_top1=True)
    (got.logp * weights).sum().backward()
    torch.testing.assert_close(got.logp.detach(), ref_logp.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.entropy, ref_ent, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.top1, ref_top1)
    assert not got.entropy.requires_grad
    torch.testing.assert_close(hidden.grad, ref_gh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head.weight.grad, ref_gw, atol=1e-5, rtol=1e-5)


def _head_calls_and_saved_bytes(chunk):
    head, hidden, ids, select = _inputs(1)
    calls = []
    head.register_forward_hook(lambda *a: calls.append(1))
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = score_tokens(head, hidden, ids, select, chunk_tokens=chunk, with_entropy=True)
    forward_calls = len(calls)
    out.logp.sum().backward()
    return forward_calls, len(calls), max(saved)


def test_chunks_keep_no_vocabulary_sized_tensor_and_recompute_in_backward():
    n_scored = int((_inputs(1)[3][:, 1:]).sum())
    calls_full, after_full, biggest_full = _head_calls_and_saved_bytes(0)
    calls_chunk, after_chunk, biggest_chunk = _head_calls_and_saved_bytes(4)
    assert (calls_full, after_full) == (1, 1)  # one head pass, no recompute
    assert biggest_full >= n_scored * V * 4  # the float32 log-softmax of every scored token is kept
    n_chunks = -(-n_scored // 4)
    assert calls_chunk == n_chunks and after_chunk == 2 * n_chunks  # each chunk recomputed once
    assert biggest_chunk < V * 4  # only hidden rows and ids are kept: nothing of vocabulary size


def test_a_single_chunk_is_not_recomputed():
    head, hidden, ids, select = _inputs(1)
    n_scored = int(select[:, 1:].sum())
    calls = []
    head.register_forward_hook(lambda *a: calls.append(1))
    score_tokens(head, hidden, ids, select, chunk_tokens=n_scored).logp.sum().backward()
    assert len(calls) == 1


def test_no_recompute_without_gradients_and_empty_selection():
    head, hidden, ids, select = _inputs()
    calls = []
    head.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = score_tokens(head, hidden, ids, select, chunk_tokens=2, with_entropy=True, with_top1=True)
    assert not out.logp.requires_grad and len(calls) == -(-int(select[:, 1:].sum()) // 2)
    none = score_tokens(head, hidden, ids, torch.zeros(B, T, dtype=torch.bool), chunk_tokens=2,
                        with_entropy=True, with_top1=True)
    assert none.logp.shape == (B, T) and not none.logp.any() and not none.top1.any()
    none.logp.sum().backward()  # still part of the graph: a loss of only such a batch can step
    assert not hidden.grad.any()


def test_negative_chunk_is_refused():
    head, hidden, ids, select = _inputs()
    with pytest.raises(ValueError, match="chunk_tokens"):
        score_tokens(head, hidden, ids, select, chunk_tokens=-1)
