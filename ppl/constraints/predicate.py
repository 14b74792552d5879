r"""An exact adaptive rejection sampler for a token predicate that only checks the tokens it draws.

Target. Given next-token weights w_i >= 0 (a model's probabilities, or those a token mask kept)
and a predicate A on tokens, the target measure is mu(i) = w_i 1[i in A], of mass Z = mu(V).
Checking A on all |V| tokens to normalise mu is what we avoid. Instead `draw` returns a token t
and a weight W that are *properly weighted* for mu:

    E[ W f(t) ] = sum_i w_i 1[i in A] f(i)   for every function f,

so a particle that multiplies its weight by W and continues from t keeps IS and SMC exact (with
f = 1, W is an unbiased estimate of Z).

Race. Give every token an exponential key r_i = E_i / w_i (E_i ~ Exp(1) independent; r_i = inf
when w_i = 0). Tokens in increasing key order are a sample without replacement proportional to
w (the first is distributed as w / sum(w)). We check tokens in that order and stop once `k + 1`
tokens have passed the predicate, or after `max_checks` checks.

Estimator. Let S be the accepted tokens among the first k that pass, within the first
`max_checks` positions. For a token i in A, condition on the keys of all other tokens. Then
i is in S exactly when r_i < tau_{-i}, where tau_{-i} is the smaller of (a) the key of the k-th
accepted token among the others and (b) the key of the `max_checks`-th token among the others:
both are thresholds that do not depend on r_i. So P(i in S | others) = 1 - exp(-w_i tau_{-i}), and
the Horvitz-Thompson terms

    W_i = w_i / (1 - exp(-w_i tau))     (i in S)

satisfy E[W_i 1[i in S] | others] = w_i. For i in S, tau_{-i} is the same observable number tau:
the key of the (k+1)-th accepted token if it lies within the first `max_checks` positions, else
the key at position `max_checks + 1` of the race (no check needed: keys are known), else inf
(then every token in A was seen and W_i = w_i exactly). Summing, sum_{i in S} W_i delta_i is an
unbiased estimate of the measure mu. Drawing t = i from S with probability W_i / sum_S W and
setting W = sum_S W_j gives E[W f(t)] = E[sum_S W_i f(i)] = sum_i mu(i) f(i), as required.
When S is empty, W = 0 (the particle dies) and the identity still holds.

Cost: about (k + 1) / (acceptance rate) checks, never more than `max_checks`. With k accepted
tokens the relative variance of W is at most about 1 / (k - 1) when w is flat and far smaller
when a few tokens hold most of the weight (they enter with probability near one and W_i ~ w_i).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

#: accepted tokens kept in the estimate (k above)
ACCEPTS = 4
#: most predicate calls per draw
MAX_CHECKS = 1024


def draw(
    log_w: torch.Tensor,
    accept: Callable[[int], bool],
    generator: torch.Generator,
    *,
    accepts: int = ACCEPTS,
    max_checks: int = MAX_CHECKS,
) -> tuple[int | None, float]:
    """A properly weighted `(token, log W)` for the measure w_i 1[accept(i)] (see the module).

    `log_w` holds log w_i (float64, -inf for weight zero). Returns `(None, -inf)` when no
    checked token passes.
    """
    if accepts < 1 or max_checks < 1:
        raise ValueError("accepts and max_checks must be positive")
    n = log_w.numel()
    e = torch.empty(n, dtype=torch.float64).exponential_(generator=generator)
    log_keys = e.log() - log_w  # +inf where w = 0
    positive = int(torch.isfinite(log_keys).sum())
    if positive == 0:
        return None, -math.inf
    accepted: list[int] = []
    log_tau = math.inf
    checked = 0
    limit = min(positive, max_checks)  # positions we may check
    chunk = min(positive, 64)
    while True:
        # the race order, computed a chunk at a time: most draws stop within a few positions
        order = torch.topk(log_keys, min(chunk, positive), largest=False, sorted=True).indices
        order_list = order.tolist()
        while checked < min(limit, len(order_list)):
            i = order_list[checked]
            checked += 1
            if accept(i):
                if len(accepted) == accepts:
                    log_tau = float(log_keys[i])  # the (k+1)-th accepted: the threshold
                    break
                accepted.append(i)
        else:
            if checked < limit:
                chunk = min(positive, max(chunk * 8, limit + 1))
                continue
            if positive > max_checks:  # the key of position max_checks + 1 bounds inclusion
                if len(order_list) <= max_checks:
                    order_list = torch.topk(log_keys, max_checks + 1, largest=False).indices
                    order_list = order_list.tolist()
                log_tau = float(log_keys[order_list[max_checks]])
        break
    if not accepted:
        return None, -math.inf
    idx = torch.tensor(accepted)
    lw = log_w[idx]
    if math.isinf(log_tau):
        log_terms = lw
    else:
        # log W_i = log w_i - log(1 - exp(-w_i tau)), computed without overflow or cancellation
        x = torch.exp(lw + log_tau)
        log_terms = lw - torch.log(-torch.expm1(-x))
    total = torch.logsumexp(log_terms, 0)
    pick = int(torch.multinomial(torch.exp(log_terms - total), 1, generator=generator))
    return accepted[pick], float(total)
