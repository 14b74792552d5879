"""A self-contained HTML view of a particle run: the prompt, particles per step, ancestry, ESS.

`render` turns a `Posterior` recorded by `ppl.inference.record.Recorder` (during an `smc`,
`importance` or `smc_steer` run) into one HTML page that a browser opens from a file, with no
server and nothing fetched from the network. The page holds the prompt, a legend, a strip of the
ESS and the running log evidence over the steps (inline SVG), the distinct final texts with
their weights, and the particles of every step (embedded JSON drawn by a short inline script).
The strip's "resample below" label sits by its dashed line where the ESS line leaves room, else
above the panel. A grid of steps wider than the window scrolls sideways in its own frame, under
a line naming the steps in view and those either side. When a run records, and what a record
costs: `ppl.inference.record`.
"""

from __future__ import annotations

import html as _html
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ppl.inference import record

if TYPE_CHECKING:
    from ppl.inference.posterior import Posterior

METHODS = ("smc", "importance", "smc_steer")


def no_record_reason(posterior: Posterior) -> str:
    """Why `posterior` has no per-step record, and how to get one."""
    method = posterior.method
    if method not in METHODS:
        return (
            f"html() draws the particles of an smc, importance or smc_steer run step by step; "
            f"a {method} run has no such steps. Run ppl.smc(...): it keeps a record by default "
            f"for up to {record.AUTO_PARTICLES} particles, and record=True keeps one for any run"
        )
    dropped = posterior.diagnostics.get("record")
    if dropped:
        why = str(dropped)
    elif posterior.num_particles > record.AUTO_PARTICLES:
        why = (
            f"runs of more than {record.AUTO_PARTICLES} particles keep none unless asked, and "
            f"this one has {posterior.num_particles}"
        )
    else:
        why = "it was run with record=False (as ppl.map runs are unless given record=True)"
    return (
        f"this {method} run has no per-step record for html(): {why}. Run it again with "
        "record=True to keep one"
    )


# -- the page ------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em; color: #222; }
h1 { font-size: 1.2em; }
h2 { font-size: 1em; margin: 1.2em 0 0.4em; }
#summary { white-space: pre; font-family: monospace; font-size: 12px; margin-bottom: 1em; }
.prompt { font-family: monospace; font-size: 12px; white-space: pre-wrap;
  overflow-wrap: anywhere; background: #f4f4f8; border-left: 3px solid #99a;
  padding: 4px 8px; margin: 4px 0; max-width: 60em; }
.prompt-from { font-size: 11px; color: #666; }
.none { color: #777; font-style: italic; }
#legend { font-size: 12px; display: grid; grid-template-columns: max-content 1fr;
  gap: 4px 10px; align-items: center; max-width: 60em; }
.swatch { display: inline-block; width: 34px; height: 14px; box-sizing: border-box;
  border-radius: 3px; border: 1px solid #99a; background: #fff; vertical-align: middle; }
.swatch.done { border-color: #393; background: #f2fbf2; }
.swatch.dead { border-color: #c66; background: #fbf2f2; }
.swatch.bar { height: 4px; border: none; background: #36c; }
.swatch.link { height: 0; border: none; border-top: 1px solid #ccd; border-radius: 0; }
.swatch.link.resample { border-top: 2px solid #e80; }
.swatch.ess { height: 0; border: none; border-top: 2px solid #36c; border-radius: 0; }
.swatch.threshold { height: 0; border: none; border-top: 1px dashed #666; border-radius: 0; }
.swatch.mark { width: 2px; height: 14px; border: none; background: #e80; border-radius: 0;
  margin: 0 16px; }
.swatch.logz { height: 0; border: none; border-top: 2px solid #393; border-radius: 0; }
svg.strip { display: block; background: #fcfcfd; border: 1px solid #e4e4ea; }
svg.strip text { font-size: 11px; fill: #555; font-family: system-ui, sans-serif; }
table.finals { border-collapse: collapse; font-size: 12px; max-width: 70em; }
table.finals td, table.finals th { padding: 3px 8px; border-bottom: 1px solid #eee;
  vertical-align: top; text-align: left; }
table.finals td.num { font-family: monospace; white-space: nowrap; text-align: right; }
.final-text { font-family: monospace; white-space: pre-wrap; overflow-wrap: anywhere; }
#run-frame { position: relative; margin-top: 0.5em; }
#run-scroll { overflow-x: auto; overflow-y: hidden; }
#run { position: relative; }
#run-hint { font-size: 12px; color: #333; background: #fff6e0; border: 1px solid #e8c070;
  border-radius: 3px; padding: 2px 8px; margin: 6px 0 2px; display: inline-block; }
#run-hint[hidden], #run-fade[hidden] { display: none; }
#run-fade { position: absolute; top: 0; right: 0; bottom: 0; width: 56px;
  pointer-events: none; background: linear-gradient(to right, rgba(255, 255, 255, 0),
  rgba(255, 255, 255, 0.95)); }
.step-label { position: absolute; top: 0; font-size: 12px; color: #555; white-space: nowrap; }
.particle { position: absolute; box-sizing: border-box; border: 1px solid #99a;
  border-radius: 4px; padding: 2px 4px; font-size: 11px; overflow: hidden; background: #fff; }
.particle.done { border-color: #393; background: #f2fbf2; }
.particle.dead { border-color: #c66; background: #fbf2f2; color: #999; }
.particle .text { font-family: monospace; white-space: pre; overflow: hidden; direction: ltr;
  text-align: left; }
.particle .bar { height: 4px; background: #36c; margin-top: 2px; }
.particle .w { color: #666; white-space: nowrap; }
svg.ancestry-layer { position: absolute; left: 0; top: 0; pointer-events: none; }
line.ancestry { stroke: #ccd; stroke-width: 1; }
line.ancestry.resample { stroke: #e80; stroke-width: 1.5; }
"""

# Boxes show the end of a text: what a particle added last is what changes between steps. The
# text is cut to the characters that fit, after a "…", and always reads left to right.
_SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById('ppl-data').textContent);
  const W = 190, GAP = 40, H = 44, TOP = 20;
  const run = document.getElementById('run');
  const steps = data.steps;
  let n = 0;
  steps.forEach(function (s) { n = Math.max(n, s.texts.length); });
  run.style.width = (steps.length * (W + GAP)) + 'px';
  run.style.height = (TOP + n * H + 10) + 'px';
  // characters that fit on a box's line, from the width of the box font
  const probe = document.createElement('div');
  probe.className = 'particle';
  probe.style.visibility = 'hidden';
  const probeText = document.createElement('span');
  probeText.className = 'text';
  probeText.textContent = 'MMMMMMMMMMMMMMMMMMMM';
  probe.appendChild(probeText);
  run.appendChild(probe);
  const charWidth = probeText.getBoundingClientRect().width / 20 || 7;
  run.removeChild(probe);
  const fits = Math.max(4, Math.floor((W - 10) / charWidth));
  function shown(text) {
    const chars = Array.from(text.replace(/\r?\n/g, '\u23ce'));
    if (chars.length <= fits) return chars.join('');
    return '\u2026' + chars.slice(chars.length - fits + 1).join('');
  }
  const svgNS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(svgNS, 'svg');
  svg.setAttribute('class', 'ancestry-layer');
  svg.setAttribute('width', steps.length * (W + GAP));
  svg.setAttribute('height', TOP + n * H + 10);
  run.appendChild(svg);
  steps.forEach(function (s, t) {
    const x = t * (W + GAP);
    const label = document.createElement('div');
    label.className = 'step-label';
    label.style.left = x + 'px';
    const ess = data.ess[t];
    label.textContent = 'step ' + s.step + (s.parents ? ' (resampled)' : '') +
      (ess === undefined || ess === null ? '' : '  ESS ' + ess.toFixed(1));
    run.appendChild(label);
    s.texts.forEach(function (text, i) {
      const d = document.createElement('div');
      d.className = 'particle ' + s.states[i];
      d.dataset.step = t; d.dataset.index = i;
      d.style.left = x + 'px'; d.style.top = (TOP + i * H) + 'px';
      d.style.width = W + 'px'; d.style.height = (H - 6) + 'px';
      d.title = text;
      const tx = document.createElement('div');
      tx.className = 'text'; tx.textContent = text === '' ? '\u00a0' : shown(text);
      const bar = document.createElement('div');
      bar.className = 'bar'; bar.style.width = Math.round(100 * s.weights[i]) + '%';
      const w = document.createElement('div');
      w.className = 'w';
      const lw = s.log_weights[i];
      w.textContent = '#' + i + '  w=' + s.weights[i].toFixed(3) +
        '  log w=' + (lw === null ? '-inf' : lw.toFixed(2));
      d.appendChild(tx); d.appendChild(bar); d.appendChild(w);
      run.appendChild(d);
    });
    if (t + 1 < steps.length) {
      const m = steps[t + 1].texts.length;
      for (let j = 0; j < m; j++) {
        const parent = s.parents ? s.parents[j] : j;
        const l = document.createElementNS(svgNS, 'line');
        l.setAttribute('class', 'ancestry' + (s.parents ? ' resample' : ''));
        l.setAttribute('x1', x + W); l.setAttribute('y1', TOP + parent * H + H / 2 - 3);
        l.setAttribute('x2', x + W + GAP); l.setAttribute('y2', TOP + j * H + H / 2 - 3);
        l.dataset.parent = parent; l.dataset.child = j; l.dataset.step = t;
        svg.appendChild(l);
      }
    }
  });
  document.getElementById('status').textContent =
    'rendered ' + steps.length + ' steps of ' + n + ' particles';
  // A grid wider than the window scrolls sideways in its frame: say so above it, with the
  // steps in view and those either side, and fade its right edge while more lies there.
  const scroller = document.getElementById('run-scroll');
  const hint = document.getElementById('run-hint');
  const fade = document.getElementById('run-fade');
  function name(t) { return steps[t].step; }
  function range(a, b) {
    return a === b ? 'step ' + name(a) : 'steps ' + name(a) + '\u2013' + name(b);
  }
  function showHint() {
    const left = scroller.scrollLeft, width = scroller.clientWidth;
    if (scroller.scrollWidth <= width + 1) { hint.hidden = true; fade.hidden = true; return; }
    const first = Math.min(steps.length - 1, Math.max(0, Math.ceil(left / (W + GAP) - 0.01)));
    const last = Math.max(first, Math.min(steps.length - 1,
      Math.floor((left + width - W) / (W + GAP) + 0.01)));
    const more = [];
    if (first > 0) more.push('\u2190 for ' + range(0, first - 1));
    if (last < steps.length - 1) more.push('\u2192 for ' + range(last + 1, steps.length - 1));
    hint.textContent = steps.length + ' steps, wider than the window: ' + range(first, last) +
      ' in view; scroll sideways ' + more.join(', ') +
      ' (shift + wheel, or the bar under the grid)';
    hint.hidden = false;
    fade.hidden = left + width >= scroller.scrollWidth - 1;
  }
  scroller.addEventListener('scroll', showHint, { passive: true });
  window.addEventListener('resize', showHint);
  showHint();
})();
"""

_LEGEND = [
    (
        "swatch",
        "a running particle: its text so far (the end of it after '…' when long; hover "
        "for all of it), its index, normalised weight w and log weight",
    ),
    ("swatch done", "a finished particle: its program returned"),
    ("swatch dead", "a dead particle: weight zero (a condition failed, or it raised)"),
    ("swatch bar", "the particle's normalised weight (full width: all of it)"),
    ("swatch link", "the particle goes on to the next step"),
    (
        "swatch link resample",
        "resampling: each particle of the next step comes from the parent "
        "its orange line starts at (smc_steer: the child kept from that parent)",
    ),
    ("swatch ess", "strip: effective sample size (ESS) after each step's reweighting"),
    ("swatch threshold", "strip: the ESS below which the run resamples"),
    ("swatch mark", "strip: a step after which the particles were resampled"),
    ("swatch logz", "strip: the running estimate of the log evidence, log Z"),
]
_FINALS_SHOWN = 50


def _esc(x: Any) -> str:
    return _html.escape(str(x), quote=True)


def _prompt_section(steps: list[dict[str, Any]]) -> str:
    found = [(s["step"], p) for s in steps for p in s.get("prompts") or ()]
    if not found:
        return (
            "<h2>Prompt</h2><div id='prompt' class='none'>no language-model context was met "
            "(the particles made no model call)</div>"
        )
    head = "Prompt" if len(found) == 1 else f"Prompts ({len(found)} distinct)"
    parts = [f"<h2>{head}</h2><div id='prompt'>"]
    for step, prompt in found:
        if len(found) > 1:
            parts.append(f"<div class='prompt-from'>first met at step {step}</div>")
        shown = _esc(prompt) if prompt else "<span class='none'>(empty)</span>"
        parts.append(f"<div class='prompt'>{shown}</div>")
    if len(found) >= record.MAX_PROMPTS:
        parts.append(f"<div class='none'>only the first {record.MAX_PROMPTS} are kept</div>")
    parts.append("</div>")
    return "".join(parts)


def _resamples_below(posterior: Posterior) -> float | None:
    """The ESS under which the run resampled (None: no such threshold, as in smc_steer)."""
    threshold = posterior.stats.get("ess_threshold")
    if isinstance(threshold, (int, float)) and threshold > 0:
        return float(threshold) * posterior.num_particles
    return None


def _legend(posterior: Posterior) -> str:
    has_threshold = _resamples_below(posterior) is not None
    rows = "".join(
        f"<span class='{cls}'></span><span>{_esc(text)}</span>"
        for cls, text in _LEGEND
        if has_threshold or cls != "swatch threshold"
    )
    return f"<h2>Legend</h2><div id='legend'>{rows}</div>"


def _series(values: Sequence[float], n: int) -> list[float | None]:
    out: list[float | None] = []
    for i in range(n):
        x = float(values[i]) if i < len(values) else math.nan
        out.append(x if math.isfinite(x) else None)
    return out


def _num(x: float) -> str:
    return f"{x:.1f}"


def _short(x: float) -> str:
    """A value for an axis label, rounding noise (1e-16) away."""
    return f"{round(x, 6) + 0.0:.4g}"


def _strip(posterior: Posterior, steps: list[dict[str, Any]]) -> str:
    """Inline SVG: ESS per step (threshold, resampling marks) over the running log evidence."""
    n_steps = len(steps)
    if n_steps == 0:
        return ""
    ess = _series(posterior.ess, n_steps)
    log_z = _series(posterior.log_evidence_steps, n_steps)
    n = max([1, posterior.num_particles] + [len(s["texts"]) for s in steps])
    width, left, right, panel, gap, top = 760, 64, 16, 90, 28, _STRIP_TOP
    plot_w = width - left - right
    height = top + 2 * panel + gap + 24

    def x_of(t: int) -> float:
        return left + (plot_w * t / (n_steps - 1) if n_steps > 1 else plot_w / 2)

    out = [
        f"<svg class='strip' id='strip' xmlns='http://www.w3.org/2000/svg' width='{width}' "
        f"height='{height}' role='img' aria-label='ESS and running log evidence per step'>"
    ]
    y0, y1 = top, top + panel  # ESS panel

    def y_ess(v: float) -> float:
        return y1 - (v / n) * panel

    out.append(
        f"<rect x='{left}' y='{y0}' width='{plot_w}' height='{panel}' fill='#fff' stroke='#ddd'/>"
    )
    for t in posterior.resampled:
        if 0 <= t < n_steps:
            x = _num(x_of(t))
            out.append(
                f"<line class='resample-mark' x1='{x}' x2='{x}' y1='{y0}' "
                f"y2='{top + 2 * panel + gap}' stroke='#e80' stroke-width='1' "
                f"stroke-opacity='0.7'><title>resampled after step {t}</title></line>"
            )
    points = [(t, x_of(t), y_ess(v), v) for t, v in enumerate(ess) if v is not None]
    level = _resamples_below(posterior)
    if level is not None:
        y = _num(y_ess(level))
        out.append(
            f"<line class='threshold' x1='{left}' x2='{left + plot_w}' y1='{y}' y2='{y}' "
            "stroke='#666' stroke-dasharray='4 3'/>"
        )
        out.append(
            _threshold_label(
                f"resample below {level:.3g}",
                y_ess(level),
                [(x, y) for _, x, y, _ in points],
                (left, left + plot_w, y0, y1),
            )
        )
    out.append(_polyline("ess-line", "#36c", points, "ESS"))
    out.append(
        f"<text x='{left - 6}' y='{y0 + 10}' text-anchor='end'>{n:.4g}</text>"
        f"<text x='{left - 6}' y='{y1}' text-anchor='end'>0</text>"
        f"<text x='6' y='{y0 + panel / 2 + 4}'>ESS</text>"
    )
    z0, z1 = y1 + gap, y1 + gap + panel  # log evidence panel
    out.append(
        f"<rect x='{left}' y='{z0}' width='{plot_w}' height='{panel}' fill='#fff' stroke='#ddd'/>"
    )
    finite = [v for v in log_z if v is not None]
    if finite:
        lo, hi = min(finite), max(finite)
        if hi - lo < 1e-9:
            lo, hi = lo - 1.0, hi + 1.0

        def y_z(v: float) -> float:
            return z1 - 4 - (v - lo) / (hi - lo) * (panel - 8)

        points = [(t, x_of(t), y_z(v), v) for t, v in enumerate(log_z) if v is not None]
        out.append(_polyline("logz-line", "#393", points, "log Z"))
        out.append(
            f"<text x='{left - 6}' y='{z0 + 10}' text-anchor='end'>{_short(hi)}</text>"
            f"<text x='{left - 6}' y='{z1}' text-anchor='end'>{_short(lo)}</text>"
        )
    else:
        out.append(f"<text x='{left + 8}' y='{z0 + panel / 2}'>log Z is -inf at every step</text>")
    out.append(f"<text x='6' y='{z0 + panel / 2 + 4}'>log Z</text>")
    out.append(
        f"<text x='{left}' y='{height - 6}'>step 0</text>"
        f"<text x='{left + plot_w}' y='{height - 6}' text-anchor='end'>step "
        f"{n_steps - 1}</text></svg>"
    )
    return "<h2>ESS and evidence</h2>" + "".join(out)


_STRIP_TOP = 20
"""Room above the ESS panel: the threshold's label goes there when no place by the line is free."""
_CHAR_W, _ASCENT, _DESCENT = 7.0, 11.0, 4.0
"""A generous box of the strip's 11px text: width per character, and the extent above and
below the baseline (measured in Chromium: about 6.3, 10.2 and 2.6)."""


def _threshold_label(
    text: str,
    y_level: float,
    line: list[tuple[float, float]],
    panel: tuple[float, float, float, float],
) -> str:
    """The label of the resampling threshold, by its dashed line where the ESS line leaves
    room: above it or below it, at the right end, the left end or in between (the first such
    place free of the ESS line and its dots); failing all, in the margin above the panel, as a
    small legend entry (a dashed stroke, then the text) that no line reaches."""
    x0, x1, top, bottom = panel
    width = _CHAR_W * len(text)
    inset = 3.0
    baselines = [y_level - 4, y_level + 3 + _ASCENT]  # above the line, below it
    spots = [x1 - inset - width, x0 + inset]  # the right end, the left end, then in between
    k = 8
    spots += [x0 + inset + (x1 - x0 - 2 * inset - width) * i / k for i in range(k - 1, 0, -1)]
    for bx in spots:
        for base in baselines:
            box = (bx, base - _ASCENT, bx + width, base + _DESCENT)
            if box[1] < 0 or box[3] > bottom:
                continue
            if not _hits(box, line, pad=3.0):
                return (
                    f"<text class='threshold-label' x='{_num(bx)}' y='{_num(base)}' "
                    f"{_HALO}>{_esc(text)}</text>"
                )
    base = top - 6  # clear of the panel and of ESS dots at N (radius 2)
    swatch = 18
    sx = x1 - width - swatch - 4
    return (
        f"<line class='threshold-key' x1='{_num(sx)}' x2='{_num(sx + swatch)}' "
        f"y1='{_num(base - 4)}' y2='{_num(base - 4)}' stroke='#666' stroke-dasharray='4 3'/>"
        f"<text class='threshold-label' x='{_num(x1 - width)}' y='{_num(base)}' {_HALO}>"
        f"{_esc(text)}</text>"
    )


_HALO = "paint-order='stroke' stroke='#fff' stroke-width='3' stroke-linejoin='round'"
"""A white edge around a label's letters, so that the resampling marks behind stay off them."""


def _hits(
    box: tuple[float, float, float, float], line: list[tuple[float, float]], pad: float
) -> bool:
    """Whether the polyline `line` (or a dot on it) comes within `pad` of `box`
    (x0, y0, x1, y1)."""
    bx0, by0, bx1, by1 = box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad
    if len(line) == 1:
        x, y = line[0]
        return bx0 <= x <= bx1 and by0 <= y <= by1
    for (ax, ay), (cx, cy) in zip(line, line[1:]):
        # Liang-Barsky: clip the segment a->c to the box; it hits when something is left
        lo, hi = 0.0, 1.0
        dx, dy = cx - ax, cy - ay
        for p, q in ((-dx, ax - bx0), (dx, bx1 - ax), (-dy, ay - by0), (dy, by1 - ay)):
            if p == 0:
                if q < 0:
                    lo, hi = 1.0, 0.0
                    break
            else:
                r = q / p
                if p < 0:
                    lo = max(lo, r)
                else:
                    hi = min(hi, r)
        if lo <= hi:
            return True
    return False


def _polyline(
    cls: str, colour: str, points: list[tuple[int, float, float, float]], name: str
) -> str:
    """A line through `points` (step, x, y, value), with a dot per step when there are few."""
    if not points:
        return ""
    path = " ".join(f"{_num(x)},{_num(y)}" for _, x, y, _ in points)
    out = [
        f"<polyline class='{cls}' points='{path}' fill='none' stroke='{colour}' "
        "stroke-width='1.5'/>"
    ]
    if len(points) <= 200:
        for t, x, y, v in points:
            out.append(
                f"<circle cx='{_num(x)}' cy='{_num(y)}' r='2' fill='{colour}'>"
                f"<title>step {t}: {name} {v:.4g}</title></circle>"
            )
    return "".join(out)


def _finals(steps: list[dict[str, Any]]) -> str:
    """The distinct texts of the last step, heaviest first, with total weight and count."""
    last = steps[-1] if steps else {"texts": [], "weights": []}
    groups: dict[str, list[float]] = {}
    zero = 0
    for text, w in zip(last["texts"], last["weights"]):
        if w > 0:
            g = groups.setdefault(text, [0.0, 0])
            g[0] += w
            g[1] += 1
        else:
            zero += 1
    ranked = sorted(groups.items(), key=lambda kv: -kv[1][0])
    rows = []
    for text, (w, k) in ranked[:_FINALS_SHOWN]:
        shown = _esc(text) if text else "<span class='none'>(empty)</span>"
        rows.append(
            f"<tr><td class='num'>{w:.3f}</td><td class='num'>{int(k)}</td>"
            f"<td><div class='final-text'>{shown}</div></td></tr>"
        )
    notes = []
    if len(ranked) > _FINALS_SHOWN:
        notes.append(f"{len(ranked) - _FINALS_SHOWN} lighter texts not shown")
    if zero:
        notes.append(f"{zero} particle{'s' if zero != 1 else ''} with weight zero left out")
    note = f"<div class='none'>{'; '.join(notes)}</div>" if notes else ""
    if not rows:
        return (
            "<h2>Final texts</h2><div id='finals' class='none'>no particle has positive "
            f"weight</div>{note}"
        )
    return (
        "<h2>Final texts</h2><table class='finals' id='finals'><tr><th>weight</th>"
        f"<th>particles</th><th>text</th></tr>{''.join(rows)}</table>{note}"
    )


def render(posterior: Posterior, title: str | None = None) -> str:
    """The HTML page of a recorded run (see the module docstring)."""
    if posterior.history is None:
        raise ValueError(no_record_reason(posterior))
    steps = posterior.history
    title = title or f"ppl {posterior.method} run"
    data = json.dumps({"steps": steps, "ess": _series(posterior.ess, len(steps))}, allow_nan=False)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (
        "<!DOCTYPE html>\n<html lang='en' dir='ltr'><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_esc(title)}</h1>"
        f"{_prompt_section(steps)}"
        f"<div id='summary'>{_esc(posterior.summary())}</div>"
        f"{_legend(posterior)}"
        f"{_strip(posterior, steps)}"
        f"{_finals(steps)}"
        "<h2>Particles, step by step</h2>"
        "<div id='status'>needs JavaScript to draw the particles</div>"
        "<div id='run-hint' hidden></div>"
        "<div id='run-frame'><div id='run-scroll'><div id='run'></div></div>"
        "<div id='run-fade' hidden></div></div>"
        f"<script type='application/json' id='ppl-data'>{data}</script>"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )
