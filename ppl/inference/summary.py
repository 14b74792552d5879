"""`Posterior.summary()`: a run read at a glance, in plain text.

What the run was (method, particles or chains, steps, time, model calls), how much to trust it
(ESS over the steps, resampling, acceptance), what the evidence means in words, then the
distinct return values with their weights and counts (texts in full, wrapped), and for numeric
choices the weighted mean, sd and quantiles.
"""

from __future__ import annotations

import json
import math
import textwrap
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ppl.inference.posterior import Posterior

QUANTILES = (0.05, 0.5, 0.95)


def canonical(value: Any) -> Any:
    """`value` itself when it is hashable, else a canonical text of it.

    Dicts and lists (what a JSON schema produces) become JSON with sorted keys, so that two
    values that are equal give the same text; anything JSON cannot write falls back to `repr`.
    """
    try:
        hash(value)
        return value
    except TypeError:
        pass
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=_no_json)
    except (TypeError, ValueError):
        return repr(value)


def _no_json(x: Any) -> Any:
    if hasattr(x, "tolist"):  # numpy and jax arrays and scalars
        return x.tolist()
    if isinstance(x, (set, frozenset)):
        return sorted(x, key=repr)
    raise TypeError(f"not JSON: {type(x).__name__}")


def in_words(log_z: float) -> str:
    """The evidence Z = exp(log_z) said plainly: "about 1 in 94", "0.62", "zero"."""
    if log_z == -math.inf:
        return "zero: no run of the program met its conditions"
    if math.isnan(log_z):
        return "undefined (NaN)"
    if log_z > 0:
        z = _number(math.exp(log_z)) if log_z < 700 else f"e^{log_z:.4g}"
        return f"{z} (above 1: the observations include densities)"
    if log_z >= -math.log(2):  # Z of one half or more
        return f"{math.exp(log_z):.3g}"
    n = _number(math.exp(-log_z)) if log_z > -700 else f"e^{-log_z:.4g}"
    return f"about 1 in {n}"


def _number(x: float) -> str:
    """2 significant figures, in words for the large ones: 94, 1,900, 2.3 million, 4.1e+15."""
    if x < 10:
        return f"{x:.2g}"
    if x < 1e6:
        return f"{float(f'{x:.2g}'):,.0f}"
    for name, scale in (("million", 1e6), ("billion", 1e9), ("trillion", 1e12)):
        if x < scale * 1000:
            return f"{x / scale:.2g} {name}"
    return f"{x:.2g}"


def weighted_quantiles(x: np.ndarray, w: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """Quantiles of the weighted sample (x, w): the smallest x whose cumulative weight >= q."""
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order]
    cum = np.cumsum(ws) / np.sum(ws)
    return [float(xs[min(int(np.searchsorted(cum, q - 1e-12)), len(xs) - 1)]) for q in qs]


def numeric_columns(post: Posterior) -> dict[str, np.ndarray]:
    """Numeric named choices present once in every weighted sample, and a numeric return value.

    Rows are the samples with positive weight, in order; a choice that is missing, repeated or
    not a real number in some sample is left out.
    """
    w = post.weights
    keep = [i for i in range(post.num_particles) if w[i] > 0]
    columns: dict[str, list[float]] = {}
    if keep and all(_real(post.values[i]) for i in keep):
        columns["return"] = [float(post.values[i]) for i in keep]
    if keep and len(post.traces) == post.num_particles:
        per_row: list[dict[str, Any]] = []
        for i in keep:
            seen: dict[str, Any] = {}
            for c in post.traces[i]:
                if c.name is not None:
                    seen[c.name] = c.value if c.name not in seen else _REPEATED
            per_row.append(seen)
        names = set(per_row[0]).intersection(*per_row[1:])
        for name in sorted(names):
            vals = [row[name] for row in per_row]
            if all(_real(v) for v in vals):
                columns[name] = [float(v) for v in vals]
    return {k: np.asarray(v, dtype=float) for k, v in columns.items()}


_REPEATED = object()


def _real(v: Any) -> bool:
    if isinstance(v, (bool, np.bool_)) or v is _REPEATED:
        return False
    if isinstance(v, (int, float, np.integer, np.floating)):
        return math.isfinite(float(v))
    shape = getattr(v, "shape", None)
    if shape == () and hasattr(v, "dtype"):  # 0-d numpy / jax arrays
        try:
            return _real(v.item())
        except (TypeError, ValueError):
            return False
    return False


def render(post: Posterior, top: int = 10, width: int = 88) -> str:
    """The text of `Posterior.summary(top, width)`."""
    lines = [_headline(post)]
    lines += _trust(post)
    if post.failure:
        lines.append(f"FAILED       {post.failure}")
    kills = post.diagnostics.get("rejected_by")
    if kills:
        lines.append(
            "rejected     " + "; ".join(f"{n} at {site}" for site, n in list(kills.items())[:3])
        )
    errors = post.diagnostics.get("errors")
    if errors:
        lines.append(f"raised       {sum(errors.values())} particles: " + "; ".join(errors))
    leaks = post.diagnostics.get("mask_leaks")
    if leaks:
        lines.append(
            f"mask leaks   {leaks} finished texts broke their constraint although the mask "
            "allowed them (given weight zero by the reference check; see MaskLeakWarning)"
        )
    if post.weights.sum() > 0:
        lines.append("")
        lines += _values(post, top, width)
        cols = numeric_columns(post)
        if cols:
            lines.append("")
            lines += _numeric(post, cols)
    return "\n".join(lines)


def _headline(post: Posterior) -> str:
    s = post.stats
    parts: list[str] = []
    if post.chain is not None:
        chains = s.get("chains", 1)
        parts.append(f"{chains} chain{'s' if chains != 1 else ''} x {s.get('steps', '?')} steps")
        parts.append(f"{post.num_particles} samples")
    else:
        parts.append(f"{post.num_particles} particles")
        if "steps" in s:
            parts.append(f"{s['steps']} steps")
    if "seconds" in s:
        parts.append(f"{s['seconds']:.1f} s")
    if "forward_calls" in s:
        parts.append(f"{s['forward_calls']} model calls, {s['tokens_fed']} tokens fed")
    return f"{post.method}: " + ", ".join(parts)


def _trust(post: Posterior) -> list[str]:
    lines = []
    if post.log_evidence is not None:
        lines.append(
            f"evidence     log Z = {post.log_evidence:.3f}, Z = {in_words(post.log_evidence)}"
        )
        if math.isfinite(post.log_evidence) and post.log_evidence <= 0:
            lines.append(
                "             the chance that the program's own runs meet its conditions and "
                "observations"
            )
    if len(post.ess):
        ess = np.asarray(post.ess, dtype=float)
        resampled = len(post.resampled)
        lines.append(
            f"ESS          min {np.min(ess):.1f}, median {np.median(ess):.1f}, "
            f"final {post.final_ess:.1f} of {post.num_particles} particles; resampled at "
            f"{resampled} of {len(ess)} steps"
        )
    elif post.chain is None and post.num_particles:
        lines.append(f"ESS          {post.final_ess:.1f} of {post.num_particles} particles")
    if post.acceptance is not None and len(post.acceptance):
        per = ", ".join(f"{a:.2f}" for a in post.acceptance[:8])
        more = ", ..." if len(post.acceptance) > 8 else ""
        label = "per chain" if post.chain is not None else "of the rejuvenation moves"
        lines.append(f"acceptance   {post.acceptance_rate:.3f} ({label}: {per}{more})")
    div = post.diagnostics.get("divergences")
    if div:
        lines.append(f"divergences  {div}")
    return lines


def _values(post: Posterior, top: int, width: int) -> list[str]:
    groups: dict[Any, list[Any]] = {}  # canonical key -> [value, weight, count]
    for v, w in zip(post.values, post.weights):
        if w <= 0:
            continue
        g = groups.setdefault(canonical(v), [v, 0.0, 0])
        g[1] += float(w)
        g[2] += 1
    ranked = sorted(groups.values(), key=lambda g: -g[1])
    alive = sum(g[2] for g in ranked)
    lines = [
        f"{len(ranked)} distinct value{'s' if len(ranked) != 1 else ''} among {alive} "
        f"sample{'s' if alive != 1 else ''} with positive weight"
        + (f"; the {top} most probable:" if len(ranked) > top else ":"),
        f"{'weight':>7} {'count':>5}  value",
    ]
    indent = " " * 15
    for value, w, count in ranked[:top]:
        text = value if isinstance(value, str) else _show(value)
        wrapped = _wrap(text, width - len(indent))
        lines.append(f"{w:7.3f} {count:5d}  {wrapped[0]}")
        lines += [indent + rest for rest in wrapped[1:]]
    if len(ranked) > top:
        rest = ranked[top:]
        lines.append(f"{'':13}  ... {len(rest)} more, total weight {sum(g[1] for g in rest):.3f}")
    return lines


def _show(value: Any) -> str:
    key = canonical(value)
    return key if isinstance(key, str) and key is not value else repr(value)


def _wrap(text: str, width: int) -> list[str]:
    """Wrapped lines of `text`, keeping its own line breaks; an empty text reads ''."""
    if text == "":
        return ["''"]
    out: list[str] = []
    for para in text.split("\n"):
        out += textwrap.wrap(para, width, replace_whitespace=False, drop_whitespace=True) or [""]
    return out


def _numeric(post: Posterior, cols: dict[str, np.ndarray]) -> list[str]:
    w = post.weights[post.weights > 0]
    head = f"{'numeric':<14}{'mean':>10}{'sd':>10}" + "".join(
        f"{f'{q:.0%}':>10}" for q in QUANTILES
    )
    lines = [head]
    for name, x in cols.items():
        mean = float(np.dot(w, x) / w.sum())
        sd = math.sqrt(max(float(np.dot(w, (x - mean) ** 2) / w.sum()), 0.0))
        qs = weighted_quantiles(x, w, QUANTILES)
        label = name if len(name) <= 13 else name[:12] + "…"
        lines.append(f"{label:<14}" + "".join(f"{v:>10.4g}" for v in (mean, sd, *qs)))
    return lines
