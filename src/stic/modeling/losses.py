"""Log-probabilities of answers, and stage 1b's loss: DPO plus an NLL term on the chosen answer.

    L = -log sigmoid( beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))] )
        - alpha * log pi(y_w|x)

with log-probs SUMMED over answer tokens (the paper's definition). ``nll_normalization="mean"``
uses the chosen answer's per-token mean log-prob in the NLL term instead (each pair weighted
equally); the DPO term always uses sums. The loss is averaged over the pairs of a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stic.modeling.chat import IGNORE_INDEX


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def answer_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each row's answer tokens, and how many there are.

    ``logits``: ``(B, T, V)``, position t predicting token t+1. ``labels``: ``(B, T)`` token ids,
    ``-100`` outside answers. Returns ``(logps (B,), num_tokens (B,))``, logps in float32 (float64
    for float64 logits, so that a float64 check is not limited by float32 rounding).
    Computed row by row so that only one row's float32 log-softmax is alive at a time.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe = targets.masked_fill(~mask, 0)
    sums = []
    for row in range(logits.shape[0]):
        row_logits = logits[row, :-1].to(at_least_float32(logits.dtype))
        picked = row_logits.gather(-1, safe[row].unsqueeze(-1)).squeeze(-1) - row_logits.logsumexp(
            -1
        )
        sums.append((picked * mask[row]).sum())
    return torch.stack(sums), mask.sum(-1)


def dpo_nll_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    *,
    beta: float,
    nll_coef: float,
    nll_normalization: str = "sum",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage 1b's loss, averaged over pairs, and its metrics.

    All inputs are ``(P,)`` summed log-probs (``chosen_tokens``: answer lengths) for P pairs.
    Returns ``(loss, metrics)``; metrics are detached scalars: ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/margin``, ``rewards/accuracy`` (beta-scaled log-ratio
    rewards, as TRL reports them), ``logps/chosen``, ``logps/rejected``, ``loss/dpo``, ``loss/nll``.
    """
    chosen_reward = beta * (policy_chosen - reference_chosen)
    rejected_reward = beta * (policy_rejected - reference_rejected)
    dpo = -F.logsigmoid(chosen_reward - rejected_reward)
    if nll_normalization == "sum":
        nll = -policy_chosen
    elif nll_normalization == "mean":
        nll = -policy_chosen / chosen_tokens.clamp(min=1)
    else:
        raise ValueError(f"nll_normalization must be 'sum' or 'mean', got {nll_normalization!r}")
    loss = (dpo + nll_coef * nll).mean()
    metrics = {
        "rewards/chosen": chosen_reward.mean(),
        "rewards/rejected": rejected_reward.mean(),
        "rewards/margin": (chosen_reward - rejected_reward).mean(),
        "rewards/accuracy": (chosen_reward > rejected_reward).float().mean(),
        "logps/chosen": policy_chosen.mean(),
        "logps/rejected": policy_rejected.mean(),
        "loss/dpo": dpo.mean(),
        "loss/nll": nll.mean(),
    }
    return loss, {k: v.detach() for k, v in metrics.items()}
