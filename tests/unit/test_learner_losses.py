"""Golden tests of the GRPO loss pieces with hand-computed numbers."""

import math

import numpy as np
import pytest
import torch

from learner.losses import (LossConfig, LossInputs, aggregate, bce_dice_loss, by_target_shape, decoder_score_loss,
                            group_advantages, grpo_loss,
                            kl_estimate, mask_log_likelihood, ppo_clip_loss, token_logprobs,
                            truncated_is_weights, zero_variance_groups)


def test_group_advantages_hand_computed():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    a = group_advantages(r, g, eps=1e-4)
    # group 0: mean 3, sample std sqrt(((-2)^2+(-1)^2+0+3^2)/3) = sqrt(14/3)
    s = math.sqrt(14 / 3)
    expect = [-2 / (s + 1e-4), -1 / (s + 1e-4), 0.0, 3 / (s + 1e-4)]
    assert torch.allclose(a[:4], torch.tensor(expect), atol=1e-6)
    assert torch.all(a[4:] == 0)  # identical rewards: no signal, and no division blow-up
    assert zero_variance_groups(r, g).tolist() == [False] * 4 + [True] * 4


def test_group_advantages_population_std_option():
    a = group_advantages(torch.tensor([0.0, 2.0]), torch.tensor([0, 0]), eps=0.0, unbiased_std=False)
    assert torch.allclose(a, torch.tensor([-1.0, 1.0]))


def test_token_logprobs_alignment():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # p(2 | t0) = 3/6
    ids = torch.tensor([[0, 2, 1]])
    lp = token_logprobs(logits, ids)
    assert lp[0, 0] == 0
    assert torch.isclose(lp[0, 1], torch.tensor(math.log(0.5)))
    assert torch.isclose(lp[0, 2], torch.tensor(math.log(0.25)))


def test_kl_estimators():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    r = 0.5  # ref / pi
    assert torch.isclose(kl_estimate(logp, ref, "k3"), torch.tensor(r - math.log(r) - 1), atol=1e-6)
    assert torch.isclose(kl_estimate(logp, ref, "k1"), torch.tensor(-math.log(r)), atol=1e-6)
    assert torch.isclose(kl_estimate(logp, ref, "k2"), torch.tensor(0.5 * math.log(r) ** 2), atol=1e-6)
    assert kl_estimate(logp, logp, "k3").item() == 0.0
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")


def test_ppo_clip_hand_computed():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    loss, clipped = ppo_clip_loss(logp, old, torch.tensor([[2.0]]), 0.2, 0.2)
    # A>0: min(r*A, clip(r)*A): r=1.5 -> 1.2*2 ; r=0.5 -> 0.5*2 ; r=1.1 -> 2.2
    assert torch.allclose(loss, -torch.tensor([[2.4, 1.0, 2.2]]))
    assert clipped.tolist() == [[True, False, False]]
    loss, _ = ppo_clip_loss(logp, old, torch.tensor([[-1.0]]), 0.2, 0.2)
    # A<0: r=1.5 -> -1.5 ; r=0.5 -> clip 0.8 -> -0.8 ; r=1.1 -> -1.1
    assert torch.allclose(loss, torch.tensor([[1.5, 0.8, 1.1]]))


def test_gradient_at_ratio_one_is_advantage_times_grad_logp():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = ppo_clip_loss(logp, logp.detach(), torch.tensor([[3.0]]), 0.2, 0.2)
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[-3.0, -3.0]]))


def test_tis_weights_capped_and_detached():
    old = torch.tensor([0.0, 0.0], requires_grad=True)
    w = truncated_is_weights(old, torch.log(torch.tensor([0.5, 4.0])), cap=1.5)
    assert torch.allclose(w, torch.tensor([1.5, 0.25])) and not w.requires_grad


def test_aggregations_hand_computed():
    per = torch.tensor([[0.0, 1.0, 3.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])
    # per-sequence means 2 and 2 -> 2 ; token mean (1+3+2)/3 = 2 ; dr_grpo 6/(2*8)
    assert aggregate(per, mask, "seq_mean_token_mean", 2, 3, 8).item() == pytest.approx(2.0)
    assert aggregate(per, mask, "token_mean", 2, 3, 8).item() == pytest.approx(2.0)
    assert aggregate(per, mask, "dr_grpo", 2, 3, 8).item() == pytest.approx(6 / 16)
    per2 = torch.tensor([[0.0, 4.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    mask2 = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 1]])
    # seq means 4 and 1 -> 2.5 ; token mean 7/4
    assert aggregate(per2, mask2, "seq_mean_token_mean", 2, 4, 8).item() == pytest.approx(2.5)
    assert aggregate(per2, mask2, "token_mean", 2, 4, 8).item() == pytest.approx(1.75)
    # micro-batches with global normalisers sum to the batch value
    a = aggregate(per2[:1], mask2[:1], "seq_mean_token_mean", 2, 4, 8)
    b = aggregate(per2[1:], mask2[1:], "seq_mean_token_mean", 2, 4, 8)
    assert (a + b).item() == pytest.approx(2.5)
    with pytest.raises(ValueError):
        aggregate(per, mask, "nope", 1, 1, 1)


def test_mask_log_likelihood_hand_computed():
    z = torch.zeros(1, 8, 8)  # p = 0.5 everywhere -> log 0.5 whatever the mask
    m = torch.zeros(1, 64, 64)
    m[0, :32] = 1
    assert torch.isclose(mask_log_likelihood(z, m, 4), torch.tensor([math.log(0.5)]))
    z = torch.full((1, 8, 8), 2.0)
    # top half of the target is 1, bottom half 0: mean of logsig(2) and logsig(-2)
    expect = 0.5 * (math.log(1 / (1 + math.exp(-2))) + math.log(1 / (1 + math.exp(2))))
    assert torch.isclose(mask_log_likelihood(z, m, 4), torch.tensor([expect]), atol=1e-6)


def test_calibration_gradient_pushes_logits_toward_the_sampled_mask():
    z = torch.zeros(1, 4, 4, requires_grad=True)
    m = torch.zeros(1, 4, 4)
    m[0, 0, 0] = 1
    mask_log_likelihood(z, m, 4).sum().backward()
    assert z.grad[0, 0, 0] > 0 and z.grad[0, 3, 3] < 0


def test_bce_dice_hand_computed():
    z = torch.zeros(1, 2, 2)
    gt = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # BCE at p=0.5 is log 2 ; dice = 1 - (2*0.5 + 1) / (2 + 1 + 1) = 0.5
    assert torch.isclose(bce_dice_loss(z, gt), torch.tensor([math.log(2) + 0.5]), atol=1e-6)


def test_decoder_score_loss_hand_computed():
    # Two candidates on a 2x2 grid; the target covers the top-left pixel.
    logits = torch.tensor([[[[1.0, -1.0], [-1.0, -1.0]],      # exactly the target: IoU 1
                            [[1.0, 1.0], [-1.0, -1.0]]]])     # two pixels, one right: IoU 1/2
    ious = torch.tensor([[0.5, 0.5]], requires_grad=True)
    obj = torch.tensor([[0.0]], requires_grad=True)
    gt = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    loss = decoder_score_loss(logits, ious, obj, gt)
    # object BCE at logit 0 = log 2; IoU MSE = ((0.5 - 1)^2 + (0.5 - 0.5)^2) / 2 = 0.125
    assert torch.isclose(loss, torch.tensor([math.log(2) + 0.125]), atol=1e-6)
    loss.sum().backward()
    assert obj.grad[0, 0] < 0  # the target is present: push the object score up
    assert ious.grad[0, 0] < 0 and ious.grad[0, 1] == 0


def test_decoder_score_loss_absent_target_and_empty_candidate():
    logits = torch.full((1, 1, 4, 4), -3.0)  # an empty candidate
    obj = torch.tensor([[2.0]], requires_grad=True)
    gt = torch.zeros(1, 8, 8)  # target absent (resized to the logits' grid)
    loss = decoder_score_loss(logits, torch.tensor([[1.0]]), obj, gt)
    # both empty count as IoU 1 (no IoU loss); BCE of logit 2 against 0 = log(1 + e^2)
    assert torch.isclose(loss, torch.tensor([math.log(1 + math.e ** 2)]), atol=1e-6)
    loss.sum().backward()
    assert obj.grad[0, 0] > 0  # absent: push the object score down


def _inputs(calib=None):
    logp = torch.log(torch.tensor([[1.0, 0.5, 0.25]])).requires_grad_(True)
    return LossInputs(logp=logp, old_logp=logp.detach().clone(), behaviour_logp=logp.detach().clone(),
                      ref_logp=torch.log(torch.tensor([[1.0, 0.25, 0.25]])), advantages=torch.tensor([2.0]),
                      mask=torch.tensor([[0, 1, 1]]), calib=calib)


def test_grpo_loss_value_and_gradient():
    x = _inputs()
    loss, stats = grpo_loss(x, LossConfig(kl_coef=0.1), num_sequences=1, num_tokens=2, max_tokens=4, num_aux=0)
    k3 = 0.5 - math.log(0.5) - 1  # token 1: ref/pi = 0.5 ; token 2: 0
    assert loss.item() == pytest.approx((-2.0 - 2.0) / 2 + 0.1 * k3 / 2)
    assert stats["tokens"] == 2 and stats["clip_frac_sum"] == 0
    loss.backward()
    # d/dlogp: -A/2 from the PG term, + 0.1 * (1 - ref/pi)/2 from k3 at token 1
    assert torch.allclose(x.logp.grad, torch.tensor([[0.0, -1.0 + 0.1 * 0.5 / 2, -1.0]]), atol=1e-6)


def test_calibration_enters_the_pg_term_only():
    seg_ll = torch.tensor(-0.7, requires_grad=True)  # the mask log-likelihood of one [SEG]
    calib = torch.zeros(1, 3).index_put((torch.tensor([0]), torch.tensor([2])), seg_ll[None])
    x = _inputs(calib)
    loss, stats = grpo_loss(x, LossConfig(kl_coef=0.4), 1, 2, 4, 0)
    loss.backward()
    # at ratio 1 the calibration term gets the same gradient as the token's log-prob: -A / tokens;
    # the KL term (coefficient 0.4) adds nothing to it
    assert seg_ll.grad.item() == pytest.approx(-1.0)
    assert stats["calib_sum"] == pytest.approx(-0.7)


def test_aux_loss_weighting():
    x = _inputs()
    x.aux = torch.tensor([1.0, 3.0], requires_grad=True)
    loss, _ = grpo_loss(x, LossConfig(kl_coef=0.0, aux_weight=0.2), 1, 2, 4, num_aux=4)
    base, _ = grpo_loss(_inputs(), LossConfig(kl_coef=0.0, aux_weight=0.2), 1, 2, 4, num_aux=4)
    assert loss.item() == pytest.approx(base.item() + 0.2 * 4.0 / 4)


def _mixed_shape_targets(seed: int = 0):
    rng = np.random.default_rng(seed)
    shapes = [(24, 40), (30, 18), (24, 40), (30, 18), (24, 40), (12, 12), (24, 40)]
    return [rng.random(s) > 0.6 for s in shapes]


def test_by_target_shape_matches_one_mask_at_a_time_in_values_and_gradients():
    targets = _mixed_shape_targets()
    rows = [3, 0, 5, 1, 6, 2, 4]  # decode row of each target, deliberately out of order
    logits_a = torch.randn(7, 16, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    logits_b = logits_a.detach().clone().requires_grad_(True)
    one_by_one = torch.stack([bce_dice_loss(logits_a[r:r + 1], torch.as_tensor(t)[None])[0]
                              for r, t in zip(rows, targets)])
    grouped = by_target_shape(lambda r, t: bce_dice_loss(logits_b[r], t), rows, targets, "cpu", max_group=2)
    assert grouped.shape == (7,)
    assert torch.allclose(grouped, one_by_one, atol=1e-6)
    (one_by_one * torch.arange(1.0, 8.0)).sum().backward()
    (grouped * torch.arange(1.0, 8.0)).sum().backward()  # position weights catch any reordering
    assert torch.allclose(logits_b.grad, logits_a.grad, atol=1e-6)


def test_by_target_shape_calls_once_per_shape_group_and_keeps_trailing_dims():
    targets = _mixed_shape_targets()
    calls = []

    def loss_fn(r, t):
        calls.append((tuple(t.shape), r.tolist()))
        return torch.stack([r.float(), t.flatten(1).float().sum(-1)], -1)

    out = by_target_shape(loss_fn, list(range(7)), targets, "cpu")
    assert [c[0] for c in calls] == [(4, 24, 40), (2, 30, 18), (1, 12, 12)]
    assert out.shape == (7, 2)
    assert out[:, 0].tolist() == list(range(7))
    assert out[:, 1].tolist() == [float(t.sum()) for t in targets]
    by_target_shape(loss_fn, list(range(7)), targets, "cpu", max_group=3)
    assert [c[0] for c in calls[3:]] == [(3, 24, 40), (1, 24, 40), (2, 30, 18), (1, 12, 12)]


def test_by_target_shape_refuses_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="2 rows but 1 targets"):
        by_target_shape(lambda r, t: r, [0, 1], [np.zeros((2, 2))], "cpu")
    with pytest.raises(ValueError, match="at least one"):
        by_target_shape(lambda r, t: r, [], [], "cpu")
