"""`Posterior.plot`: one matplotlib figure per run, chosen by the kind of run.

* SMC (`smc`, `smc_steer`): the ESS after each step's reweighting, with the number of particles,
  the resampling threshold (`ess_threshold` x N) and the resampling steps marked; below it, the
  running estimate of log Z. The legend stands to the right of the ESS panel, off the data.
* Importance sampling: a histogram of the normalised log weights, with N and the ESS in the
  title, and the normalised weights sorted from the heaviest, against the uniform 1/N.
* MCMC (`mh`, `pimh`, `pgibbs`, `nuts`): a trace per chain of each numeric quantity (a numeric
  return value, then numeric named choices; for other values the log probability of the
  choices, or the length of a text), then the acceptance rate of each chain.

Every panel has a title and labelled axes. matplotlib is optional: `pip install matplotlib`, or
`pip install -e '.[plot]'` in a clone of ppl.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ppl.inference.weights import log_sum_exp

if TYPE_CHECKING:
    from ppl.inference.posterior import Posterior

MAX_QUANTITIES = 3  # trace panels of an MCMC plot
MAX_LEGEND = 8  # chains named in a legend


def plot(post: Posterior, path: str | None = None) -> Any:
    """The figure of `post` (see the module docstring), saved to `path` when given."""
    plt = _pyplot()
    if post.chain is not None:
        fig = _chains(post, plt)
    elif post.method == "importance":
        fig = _importance(post, plt)
    elif len(post.ess):
        fig = _particles(post, plt)
    else:
        raise ValueError(f"{post.method} has no per-step ESS, chains or weights to plot")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "Posterior.plot needs matplotlib: pip install matplotlib "
            "(in a clone of ppl: pip install -e '.[plot]')"
        ) from None
    return plt


# -- SMC -----------------------------------------------------------------------------------------


def _particles(post: Posterior, plt: Any) -> Any:
    n = post.num_particles
    ess = np.asarray(post.ess, dtype=float)
    steps = np.arange(len(ess))
    fig, (ax_ess, ax_z) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.5))

    ax_ess.plot(steps, ess, marker=".", color="tab:blue", label="ESS")
    ax_ess.axhline(n, color="grey", lw=0.8, ls=":", label=f"particles N = {n}")
    threshold = post.stats.get("ess_threshold")
    if threshold:
        ax_ess.axhline(
            threshold * n,
            color="tab:red",
            lw=1.0,
            ls="--",
            label=f"resampling threshold {threshold:g} x N",
        )
    moved = [t for t in post.resampled if 0 <= t < len(ess)]
    what = "selection" if post.method == "smc_steer" else "resampled"
    if moved:
        ax_ess.plot(
            moved, ess[moved], ls="none", marker="v", color="tab:orange", label=f"{what} here"
        )
        for ax in (ax_ess, ax_z):
            for t in moved:
                ax.axvline(t, color="tab:orange", lw=0.6, alpha=0.35)
    ax_ess.set_ylim(0, n * 1.08)
    ax_ess.set_title(
        f"{post.method}: effective sample size per step ({len(post.resampled)} {what} steps)"
    )
    ax_ess.set_ylabel("ESS (before resampling)")
    ax_ess.set_xlabel("step")
    # beside the panel, not in it: any place inside covers the ESS of some run (ESS at N covers
    # the top, a run that fell covers the bottom); `tight_layout` makes room for it
    ax_ess.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize="small")

    z = np.asarray(post.log_evidence_steps, dtype=float)
    finite = np.isfinite(z)
    if finite.any():
        ax_z.plot(np.arange(len(z))[finite], z[finite], marker=".", color="tab:green")
    else:
        _note(ax_z, "no finite estimate recorded")
    final = "n/a" if post.log_evidence is None else f"{post.log_evidence:.3f}"
    ax_z.set_title(f"running log evidence estimate (final log Z = {final})")
    ax_z.set_ylabel("log Z estimate")
    ax_z.set_xlabel("step")
    ax_ess.tick_params(labelbottom=True)
    _integer_ticks(ax_z)
    return fig


# -- importance sampling -------------------------------------------------------------------------


def _importance(post: Posterior, plt: Any) -> Any:
    n = post.num_particles
    lw = np.asarray(post.log_weights, dtype=float)
    fig, (ax_hist, ax_sorted) = plt.subplots(2, 1, figsize=(7, 5.5))
    alive = np.isfinite(lw)
    zero = int(n - alive.sum())
    title = f"importance: N = {n}, ESS = {post.final_ess:.1f}"
    if zero:
        title += f", {zero} with zero weight"
    if alive.any():
        log_w = lw[alive] - log_sum_exp(lw[alive])
        bins = min(30, max(5, int(math.sqrt(alive.sum())) + 1))
        ax_hist.hist(log_w, bins=bins, color="tab:blue", edgecolor="white")
        ax_hist.axvline(
            -math.log(n), color="tab:red", lw=1.0, ls="--", zorder=3, label="equal weights 1/N"
        )
        ax_hist.legend(loc="best", fontsize="small")
        w = np.sort(np.exp(log_w))[::-1]
        ranks = np.arange(1, len(w) + 1)
        ax_sorted.bar(ranks, w, width=1.0, color="tab:blue", label="normalised weight")
        ax_sorted.axhline(1 / n, color="tab:red", lw=1.0, ls="--", zorder=3, label="1/N")
        ax_sorted.legend(loc="upper right", fontsize="small")
    else:
        ax_hist.hist([], bins=1)
        _note(ax_hist, "every particle has zero weight")
        _note(ax_sorted, "every particle has zero weight")
    ax_hist.set_title(title)
    ax_hist.set_xlabel("normalised log weight")
    ax_hist.set_ylabel("particles")
    ax_sorted.set_title("normalised weights, heaviest first")
    ax_sorted.set_xlabel("particle rank")
    ax_sorted.set_ylabel("weight")
    return fig


# -- MCMC ----------------------------------------------------------------------------------------


def _chains(post: Posterior, plt: Any) -> Any:
    quantities = trace_quantities(post)
    rows = max(1, len(quantities)) + 1
    fig, axes = plt.subplots(rows, 1, figsize=(7, 2.4 * rows), squeeze=False)
    axes = axes[:, 0]
    chain = np.asarray(post.chain)
    ids = np.unique(chain)
    if not quantities:
        ax = axes[0]
        _note(ax, "no numeric quantity to trace")
        ax.set_title(f"{post.method}: trace")
        ax.set_xlabel("step (kept states)")
        ax.set_ylabel("value")
    for ax, (label, values) in zip(axes, quantities):
        for c in ids:
            ys = values[chain == c]
            ax.plot(np.arange(len(ys)), ys, lw=0.9, label=f"chain {c}")
        per = " per chain" if len(ids) > 1 else ""
        ax.set_title(f"{post.method}: trace of {label}{per}")
        ax.set_xlabel("step (kept states)")
        ax.set_ylabel(label)
        _integer_ticks(ax)
        if 1 < len(ids) <= MAX_LEGEND:
            ax.legend(loc="best", fontsize="small", ncol=min(4, len(ids)))
    ax = axes[-1]
    acc = post.acceptance
    if acc is not None and len(acc):
        ax.bar(np.arange(len(acc)), acc, width=0.6 if len(acc) > 1 else 0.3, color="tab:blue")
        ax.set_xticks(np.arange(len(acc)))
        ax.set_xlim(-0.8, len(acc) - 0.2)
        if len(acc) > 1:
            ax.axhline(float(np.mean(acc)), color="tab:red", ls="--", zorder=3, label="mean")
            ax.legend(loc="upper right", fontsize="small")
        mean = f" (mean {float(np.mean(acc)):.3f})" if len(acc) > 1 else f" {float(acc[0]):.3f}"
    else:
        _note(ax, "not recorded")
        mean = ""
    ax.set_ylim(0, 1.05)
    what = "reference change rate" if post.method == "pgibbs" else "acceptance rate"
    ax.set_title(f"{what} per chain{mean}" if len(ids) > 1 else f"{what}{mean}")
    ax.set_xlabel("chain")
    ax.set_ylabel(what)
    return fig


def trace_quantities(post: Posterior) -> list[tuple[str, np.ndarray]]:
    """Numeric series to trace, one value per sample: a numeric return value, then numeric named
    choices present in every sample; failing both, the log probability of each sample's
    choices, or the length of text values. At most `MAX_QUANTITIES` of them."""
    out: list[tuple[str, np.ndarray]] = []
    values = post.values
    if values and all(_is_number(v) for v in values):
        out.append(("return value", np.asarray(values, dtype=float)))
    traces = post.traces
    if traces and len(traces) == len(values):
        rows = [{c.name: c.value for c in t if c.name is not None} for t in traces]
        names = set(rows[0])
        for row in rows[1:]:
            names &= set(row)
        for name in sorted(names):
            if all(_is_number(r[name]) for r in rows):
                xs = np.asarray([r[name] for r in rows], dtype=float)
                if not (out and np.array_equal(out[0][1], xs)):  # not the return value again
                    out.append((name, xs))
    if not out and traces and len(traces) == len(values):
        log_p = np.asarray([sum(float(c.log_prob) for c in t) for t in traces], dtype=float)
        if np.isfinite(log_p).any():
            out.append(("log p(choices)", log_p))
    if not out and values and all(isinstance(v, str) for v in values):
        out.append(("text length", np.asarray([len(v) for v in values], dtype=float)))
    return out[:MAX_QUANTITIES]


# -- helpers -------------------------------------------------------------------------------------


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating, np.bool_))
