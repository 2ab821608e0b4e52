"""Training losses, all in fp32 (docs/numerics.md).

- cross_entropy: mean next-token CE over unmasked positions.
- mtp_loss: L_MTP = (λ/D) Σ_k L_k (V3 report eq. 24-25); depth k at position i predicts t_{i+k+1}.
- balance_loss: sequence-wise balance loss α Σ_i f_i P_i (V3 report eq. 17-20), averaged over sequences and
  summed over MoE layers (each layer has its own loss in the paper; their sum is what the step optimizes).
Legend: B batch, T positions, V vocab, D MTP depth, L MoE layers, E routed experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits, targets, mask=None):
    """Mean of -log p(target) over positions where mask is true; logits [..., V], targets/mask [...]."""
    mask = jnp.ones(targets.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    return _masked_nll(logits, targets.astype(jnp.int32), mask)


@jax.custom_vjp
def _masked_nll(logits, targets, mask):
    """Σ mask·(logsumexp(logits) − logits[target]) / max(Σ mask, 1), in fp32. Its gradient is the closed form
    (softmax − onehot(target))·mask/Σmask, one pass over the logits instead of log_softmax's backward plus
    a scatter of the picked entries (the [N, V] logits are the largest activation of a small model's step)."""
    return _nll_forward(logits, targets, mask)[0]


def _nll_forward(logits, targets, mask):
    x = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(x, axis=-1)
    picked = jnp.take_along_axis(x, targets[..., None], axis=-1)[..., 0]
    count = jnp.maximum(jnp.sum(mask), 1.0)
    return jnp.sum((lse - picked) * mask) / count, (logits, targets, mask, lse, count)


def _nll_backward(res, g):
    logits, targets, mask, lse, count = res
    x = logits.astype(jnp.float32)
    onehot = jnp.arange(x.shape[-1], dtype=jnp.int32) == targets[..., None]
    d = (jnp.exp(x - lse[..., None]) - onehot) * (g * mask / count)[..., None]
    return d.astype(logits.dtype), None, None  # targets and mask are data, not parameters


_masked_nll.defvjp(_nll_forward, _nll_backward)


def mtp_losses(mtp_logits, targets, mask=None):
    """Per-depth losses [D]: L_k = CE(mtp_logits[k-1][:, :T-k], targets[:, k:]) with targets[i] = t_{i+1}."""
    d, t = mtp_logits.shape[0], targets.shape[1]
    if d >= t:
        raise ValueError(f"mtp_logits: MTP depth {d} needs sequences longer than {d}, got length {t}")
    mask = jnp.ones(targets.shape, jnp.float32) if mask is None else mask
    return jnp.stack([cross_entropy(mtp_logits[k - 1][:, :t - k], targets[:, k:], mask[:, k:])
                      for k in range(1, d + 1)])


def mtp_loss(mtp_logits, targets, mask=None, lam: float = 0.3):
    """L_MTP = (λ/D) Σ_k L_k; zero when D = 0."""
    if mtp_logits.shape[0] == 0:
        return jnp.zeros((), jnp.float32)
    return lam * jnp.mean(mtp_losses(mtp_logits, targets, mask))


def balance_loss(aux, alpha: float):
    """α · Σ_layers mean_b Σ_i f_i P_i from the model's aux (zero for a model without MoE layers)."""
    if "balance_f" not in aux:
        return jnp.zeros((), jnp.float32)
    per_seq = jnp.sum(aux["balance_f"] * aux["balance_p"], axis=-1)  # [L, B]
    return alpha * jnp.sum(jnp.mean(per_seq, axis=-1))
