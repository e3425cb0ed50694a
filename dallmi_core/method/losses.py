"""DALLMi's loss terms as masked tensor ops over all labels at once (DESIGN.md section 4).

Notation: z are logits, phi = sigmoid(z). `log` is VPU's variational loss, `norm` the paper's
"norm of sigmoid outputs" as the official code computes it. Everything is computed in float32
through logsigmoid/logsumexp/logaddexp so that no log ever sees an exact zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def variational_term(z_unlabeled: torch.Tensor, z_positive: torch.Tensor, variant: str) -> torch.Tensor:
    """Per-label V_l [L] from z_unlabeled [B, L] and z_positive [L, k] (label l's positives' logit l).

    log:  V_l = log mean_{u} phi_l(u) - mean_{p in P_l} log phi_l(p)
    norm: V_l = mean_{u} phi_l(u) - || (phi_l(p))_{p in P_l} ||_2
    """
    z_u, z_p = z_unlabeled.float(), z_positive.float()
    if variant == "log":
        log_mean_u = torch.logsumexp(F.logsigmoid(z_u), dim=0) - math.log(z_u.shape[0])
        return log_mean_u - F.logsigmoid(z_p).mean(dim=1)
    if variant == "norm":
        return torch.sigmoid(z_u).mean(dim=0) - torch.linalg.vector_norm(torch.sigmoid(z_p), dim=1)
    raise ValueError(f"Unknown variational variant {variant!r}.")


def mixup_log_target(z_u_pair: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """log t with t = mu * phi(u) + (1 - mu) * 1: the unlabeled doc weighted by mu, as its input is."""
    mu = mu.float().clamp(0.0, 1.0)
    return torch.logaddexp(torch.log(mu) + F.logsigmoid(z_u_pair.float()), torch.log1p(-mu))


def mixup_term(
    z_u_pair: torch.Tensor, z_mixed: torch.Tensor, mu: torch.Tensor, variant: str, detach_target: bool = False
) -> torch.Tensor:
    """Per-label R_l [L] from [L, m] tensors: logit of label l on the unlabeled doc and on the mix.

    log:  R_l = mean_j (log t - log phi_l(x~))^2;   norm: R_l = mean_j (t - phi_l(x~))^2.
    The target keeps its gradient unless `detach_target` (VPU does not detach).
    """
    log_t = mixup_log_target(z_u_pair, mu)
    if detach_target:
        log_t = log_t.detach()
    if variant == "log":
        diff = log_t - F.logsigmoid(z_mixed.float())
    elif variant == "norm":
        diff = torch.exp(log_t) - torch.sigmoid(z_mixed.float())
    else:
        raise ValueError(f"Unknown variational variant {variant!r}.")
    return diff.pow(2).mean(dim=1)


def dallmi_objective(
    variational: torch.Tensor, mixup: torch.Tensor | None, lambda_mix: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """loss = sum over the labels given (those with tags) of (V_l + lambda_mix * R_l); parts for progress."""
    v = variational.sum()
    r = mixup.sum() if mixup is not None else variational.new_zeros(())
    loss = v + lambda_mix * r
    return loss, {"loss": float(loss.detach()), "variational": float(v.detach()), "mixup": float(r.detach())}


def anchor_term(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-label A_l [L]: mean over documents of KL(Bernoulli(t) || Bernoulli(phi(z))), the source
    model's (or a tag's) probability t as the target; zero where the model still agrees with it."""
    t = targets.float().clamp(0.0, 1.0)
    cross = F.binary_cross_entropy_with_logits(z.float(), t, reduction="none")
    entropy = -(torch.special.xlogy(t, t) + torch.special.xlogy(1 - t, 1 - t))
    return (cross - entropy).mean(dim=0)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label BCE (source fine-tuning, bce-partial, target-oracle), mean over labels and docs."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
