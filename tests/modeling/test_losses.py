"""Tests for stic.modeling.losses: answer log-probs and the DPO + NLL loss against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from stic.modeling.losses import answer_logps, dpo_nll_loss

BETA = 0.1
ALPHA = 1 / 1024
PC = [-10.0, -20.0]  # policy chosen
PR = [-12.0, -15.0]  # policy rejected
RC = [-11.0, -19.0]  # reference chosen
RR = [-11.0, -16.0]  # reference rejected
TOKENS = [5, 10]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _margins() -> list[float]:
    # z_i = beta * ((pc - rc) - (pr - rr)); pair 0: 0.1*(1 - (-1)) = 0.2, pair 1: 0.1*(-1 - 1) = -0.2
    return [BETA * ((pc - rc) - (pr - rr)) for pc, pr, rc, rr in zip(PC, PR, RC, RR, strict=True)]


def _expected_loss(normalization: str) -> tuple[float, float, float]:
    """(loss, dpo term, nll term), each averaged over the pairs, in plain Python."""
    dpo = [-math.log(_sigmoid(z)) for z in _margins()]
    if normalization == "sum":
        nll = [-pc for pc in PC]
    else:
        nll = [-pc / n for pc, n in zip(PC, TOKENS, strict=True)]
    loss = sum(d + ALPHA * n for d, n in zip(dpo, nll, strict=True)) / len(PC)
    return loss, sum(dpo) / len(dpo), sum(nll) / len(nll)


def _inputs(requires_grad: bool = False) -> dict[str, torch.Tensor]:
    return {
        "policy_chosen": torch.tensor(PC, dtype=torch.float64, requires_grad=requires_grad),
        "policy_rejected": torch.tensor(PR, dtype=torch.float64, requires_grad=requires_grad),
        "reference_chosen": torch.tensor(RC, dtype=torch.float64),
        "reference_rejected": torch.tensor(RR, dtype=torch.float64),
        "chosen_tokens": torch.tensor(TOKENS),
    }


def test_margins_of_the_fixture_are_what_the_comments_say():
    assert _margins() == pytest.approx([0.2, -0.2])


@pytest.mark.parametrize("normalization", ["sum", "mean"])
def test_loss_matches_hand_computation(normalization):
    loss, metrics = dpo_nll_loss(
        **_inputs(), beta=BETA, nll_coef=ALPHA, nll_normalization=normalization
    )
    expected_loss, expected_dpo, expected_nll = _expected_loss(normalization)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-12)
    assert metrics["loss/dpo"].item() == pytest.approx(expected_dpo, rel=1e-12)
    assert metrics["loss/nll"].item() == pytest.approx(expected_nll, rel=1e-12)
    # By hand: dpo = (-log sig(0.2) - log sig(-0.2)) / 2 = (0.598139 + 0.798139) / 2.
    assert expected_dpo == pytest.approx((0.5981388693815918 + 0.7981388693815918) / 2)
    if normalization == "sum":
        assert expected_nll == pytest.approx(15.0)  # (10 + 20) / 2
    else:
        assert expected_nll == pytest.approx(2.0)  # (10/5 + 20/10) / 2


def test_sum_and_mean_differ_only_in_the_nll_term():
    loss_sum, m_sum = dpo_nll_loss(**_inputs(), beta=BETA, nll_coef=ALPHA, nll_normalization="sum")
    loss_mean, m_mean = dpo_nll_loss(
        **_inputs(), beta=BETA, nll_coef=ALPHA, nll_normalization="mean"
    )
    assert m_sum["loss/dpo"].item() == pytest.approx(m_mean["loss/dpo"].item())
    assert (loss_sum - loss_mean).item() == pytest.approx(ALPHA * (15.0 - 2.0))


def test_default_normalization_is_sum():
    loss_default, _ = dpo_nll_loss(**_inputs(), beta=BETA, nll_coef=ALPHA)
    loss_sum, _ = dpo_nll_loss(**_inputs(), beta=BETA, nll_coef=ALPHA, nll_normalization="sum")
    assert loss_default.item() == loss_sum.item()


def test_metrics_match_hand_computation():
    _, metrics = dpo_nll_loss(**_inputs(), beta=BETA, nll_coef=ALPHA)
    chosen_rewards = [BETA * (pc - rc) for pc, rc in zip(PC, RC, strict=True)]  # [0.1, -0.1]
    rejected_rewards = [BETA * (pr - rr) for pr, rr in zip(PR, RR, strict=True)]  # [-0.1, 0.1]
    expected = {
        "rewards/chosen": sum(chosen_rewards) / 2,
        "rewards/rejected": sum(rejected_rewards) / 2,
        "rewards/margin": sum(_margins()) / 2,
        "rewards/accuracy": 0.5,  # pair 0 prefers chosen, pair 1 does not
        "logps/chosen": -15.0,
        "logps/rejected": -13.5,
    }
    for key, value in expected.items():
        assert metrics[key].item() == pytest.approx(value, abs=1e-12), key
    assert set(metrics) == set(expected) | {"loss/dpo", "loss/nll"}
    assert all(m.ndim == 0 and not m.requires_grad for m in metrics.values())


def test_metrics_are_detached_even_with_gradients():
    _, metrics = dpo_nll_loss(**_inputs(requires_grad=True), beta=BETA, nll_coef=ALPHA)
    assert all(not m.requires_grad for m in metrics.values())


@pytest.mark.parametrize("normalization", ["sum", "mean"])
def test_gradients_match_hand_derivation(normalization):
    inputs = _inputs(requires_grad=True)
    loss, _ = dpo_nll_loss(**inputs, beta=BETA, nll_coef=ALPHA, nll_normalization=normalization)
    loss.backward()
    pairs = len(PC)
    grad_chosen = inputs["policy_chosen"].grad.tolist()
    grad_rejected = inputs["policy_rejected"].grad.tolist()
    for i, z in enumerate(_margins()):
        nll_weight = ALPHA if normalization == "sum" else ALPHA / TOKENS[i]
        expected_chosen = (-(1 - _sigmoid(z)) * BETA - nll_weight) / pairs
        expected_rejected = (1 - _sigmoid(z)) * BETA / pairs
        assert grad_chosen[i] == pytest.approx(expected_chosen, rel=1e-12)
        assert grad_rejected[i] == pytest.approx(expected_rejected, rel=1e-12)
        # Raising the chosen log-prob lowers the loss; raising the rejected one raises it.
        assert grad_chosen[i] < 0
        assert grad_rejected[i] > 0


def test_at_policy_equal_reference_dpo_term_is_log_two():
    logps = torch.tensor([-3.0, -7.5, -40.0], dtype=torch.float64)
    rejected = torch.tensor([-4.0, -1.0, -9.0], dtype=torch.float64)
    loss, metrics = dpo_nll_loss(
        logps,
        rejected,
        logps.clone(),
        rejected.clone(),
        torch.tensor([3, 4, 5]),
        beta=BETA,
        nll_coef=0.0,
    )
    assert metrics["loss/dpo"].item() == pytest.approx(math.log(2))
    assert loss.item() == pytest.approx(math.log(2))
    assert metrics["rewards/margin"].item() == 0.0
    assert metrics["rewards/accuracy"].item() == 0.0  # a tie is not a win


def test_mean_normalization_does_not_divide_by_zero_tokens():
    inputs = _inputs()
    inputs["chosen_tokens"] = torch.tensor([0, 10])
    loss, metrics = dpo_nll_loss(**inputs, beta=BETA, nll_coef=ALPHA, nll_normalization="mean")
    assert math.isfinite(loss.item())
    assert metrics["loss/nll"].item() == pytest.approx((10.0 + 2.0) / 2)


@pytest.mark.parametrize("bad", ["token", "Sum", "", "avg"])
def test_invalid_nll_normalization_raises(bad):
    with pytest.raises(ValueError, match="nll_normalization") as info:
        dpo_nll_loss(**_inputs(), beta=BETA, nll_coef=ALPHA, nll_normalization=bad)
    assert repr(bad) in str(info.value)


# ----------------------------------------------------------------------------- answer_logps


def _manual_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[int]]:
    sums, counts = [], []
    for b in range(logits.shape[0]):
        total, count = 0.0, 0
        for t in range(logits.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            total += torch.log_softmax(logits[b, t].double(), dim=-1)[target].item()
            count += 1
        sums.append(total)
        counts.append(count)
    return sums, counts


def test_answer_logps_matches_a_manual_loop():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen) * 3
    labels = torch.tensor(
        [
            [-100, -100, 3, 6, 0],  # answer = last three tokens
            [-100, 2, -100, 5, -100],  # scattered answer tokens
        ]
    )
    logps, counts = answer_logps(logits, labels)
    expected, expected_counts = _manual_logps(logits, labels)
    assert logps.shape == (2,)
    assert logps.dtype == torch.float32
    assert logps.tolist() == pytest.approx(expected, rel=1e-5)
    assert counts.tolist() == expected_counts == [3, 2]


def test_answer_logps_ignores_the_first_label():
    # Position 0 has nothing predicting it: its label never counts.
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 7, generator=gen)
    with_first = torch.tensor([[4, -100, 1, 2]])
    without_first = torch.tensor([[-100, -100, 1, 2]])
    a, na = answer_logps(logits, with_first)
    b, nb = answer_logps(logits, without_first)
    assert a.item() == b.item()
    assert na.item() == nb.item() == 2


def test_answer_logps_fully_masked_row_is_zero():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 7, generator=gen)
    labels = torch.tensor([[-100] * 5, [-100, -100, 1, 2, 3]])
    logps, counts = answer_logps(logits, labels)
    assert logps[0].item() == 0.0
    assert counts.tolist() == [0, 3]
    expected, _ = _manual_logps(logits, labels)
    assert logps[1].item() == pytest.approx(expected[1], rel=1e-5)


def test_answer_logps_computes_in_float32_from_half_logits():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 5, 7, generator=gen).to(torch.bfloat16)
    labels = torch.tensor([[-100, 1, 2, 3, 4]])
    logps, _ = answer_logps(logits, labels)
    expected, _ = _manual_logps(logits.float(), labels)
    assert logps.dtype == torch.float32
    assert logps.item() == pytest.approx(expected[0], rel=1e-5)


def test_answer_logps_gradient_flows_to_logits():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 4, 7, generator=gen, requires_grad=True)
    labels = torch.tensor([[-100, -100, 5, -100]])
    logps, _ = answer_logps(logits, labels)
    logps.sum().backward()
    grad = logits.grad[0]
    # Only position 1 (predicting token 2) contributes: d/dlogit = onehot(5) - softmax.
    expected = -torch.softmax(logits[0, 1].detach(), -1)
    expected[5] += 1
    assert torch.allclose(grad[1], expected, atol=1e-6)
    assert torch.count_nonzero(grad[[0, 2, 3]]) == 0


def test_loss_value_with_asymmetric_margins_catches_a_flipped_dpo_term():
    """The fixture above has margins +0.2 and -0.2, whose -log sigmoid values average the same
    with the DPO term's sign flipped. Here margins are +0.5 and +0.15 (no symmetry), so the loss
    VALUE alone pins the sign: flipped, it would be the mean of -log sigmoid(-z)."""
    pc, pr = torch.tensor([-8.0, -30.0]), torch.tensor([-12.0, -31.0])
    rc, rr = torch.tensor([-9.0, -30.5]), torch.tensor([-8.0, -30.0])
    margins = [BETA * ((-8 + 9) - (-12 + 8)), BETA * ((-30 + 30.5) - (-31 + 30))]
    assert margins == pytest.approx([0.5, 0.15])
    dpo = [math.log1p(math.exp(-z)) for z in margins]  # -log sigmoid(z)
    flipped = [math.log1p(math.exp(z)) for z in margins]
    nll = [8.0, 30.0]
    loss, metrics = dpo_nll_loss(
        pc, pr, rc, rr, torch.tensor([4, 9]), beta=BETA, nll_coef=ALPHA, nll_normalization="sum"
    )
    expected = sum(d + ALPHA * n for d, n in zip(dpo, nll, strict=True)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["loss/dpo"].item() == pytest.approx(sum(dpo) / 2, rel=1e-6)
    assert sum(flipped) / 2 - sum(dpo) / 2 > 0.3  # what a flipped sign would add
    # The reward metrics, which the fixture above cannot tell apart from their sum (its
    # chosen and rejected rewards cancel): chosen 0.1*[1, 0.5], rejected 0.1*[-4, -1].
    assert metrics["rewards/chosen"].item() == pytest.approx(0.075, rel=1e-6)
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.25, rel=1e-6)
    assert metrics["rewards/margin"].item() == pytest.approx(sum(margins) / 2, rel=1e-6)
    assert metrics["rewards/accuracy"].item() == 1.0
    # By hand: -log sigmoid(0.5) = 0.474077, -log sigmoid(0.15) = 0.620957.
    assert dpo == pytest.approx([0.4740769841801067, 0.6209570477895321], rel=1e-9)
