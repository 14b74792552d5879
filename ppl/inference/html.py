"""A self-contained HTML view of an SMC run: particles per step, their text, weights, ancestry.

`Recorder` keeps a light snapshot of the particles at every step of a run made with
`record=True`; `render` turns a recorded `Posterior` into one HTML page (data as embedded JSON,
drawn by a short inline script) that a browser opens from a file, with no server and nothing
fetched from the network.
"""

from __future__ import annotations

import html as _html
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ppl.inference.posterior import normalise

if TYPE_CHECKING:
    from ppl.inference.engine import Particle
    from ppl.inference.posterior import Posterior


class Recorder:
    """Per-step records: `{"step", "texts", "log_weights", "weights", "states", "parents"}`.

    `parents[i]` (set when the particles were resampled after that step) is the index, in that
    step, of the parent of particle i of the next step; None means no resampling (i -> i).
    """

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self._text_cache: dict[int, Any] = {}

    def step(self, particles: Sequence[Particle], log_weights: np.ndarray) -> None:
        from ppl.inference.mcmc import token_text

        lw = np.asarray(log_weights, dtype=float)
        self.steps.append(
            {
                "step": len(self.steps),
                "texts": [token_text(p.trace, self._text_cache) for p in particles],
                "log_weights": [float(x) if math.isfinite(x) else None for x in lw],
                "weights": normalise(lw).tolist(),
                "states": [
                    "dead" if p.log_weight == -math.inf else "done" if p.done else "running"
                    for p in particles
                ],
                "parents": None,
            }
        )

    def resampled(self, parents: np.ndarray) -> None:
        self.steps[-1]["parents"] = [int(i) for i in parents]


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em; color: #222; }
h1 { font-size: 1.2em; }
#summary { white-space: pre; font-family: monospace; font-size: 12px; margin-bottom: 1em; }
#run { position: relative; }
.step-label { position: absolute; top: 0; font-size: 12px; color: #555; }
.particle { position: absolute; box-sizing: border-box; border: 1px solid #99a;
  border-radius: 4px; padding: 2px 4px; font-size: 11px; overflow: hidden; background: #fff; }
.particle.done { border-color: #393; background: #f2fbf2; }
.particle.dead { border-color: #c66; background: #fbf2f2; color: #999; }
.particle .text { font-family: monospace; white-space: pre; overflow: hidden;
  text-overflow: ellipsis; direction: rtl; text-align: left; }
.particle .bar { height: 4px; background: #36c; margin-top: 2px; }
.particle .w { color: #666; }
svg.ancestry-layer { position: absolute; left: 0; top: 0; pointer-events: none; }
line.ancestry { stroke: #ccd; stroke-width: 1; }
line.ancestry.resample { stroke: #e80; stroke-width: 1.5; }
"""

_SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById('ppl-data').textContent);
  const W = 190, GAP = 40, H = 44, TOP = 20;
  const run = document.getElementById('run');
  const steps = data.steps;
  const n = steps.length ? steps[0].texts.length : 0;
  run.style.width = (steps.length * (W + GAP)) + 'px';
  run.style.height = (TOP + n * H + 10) + 'px';
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
    label.textContent = 'step ' + s.step + (s.parents ? ' (resampled)' : '');
    run.appendChild(label);
    s.texts.forEach(function (text, i) {
      const d = document.createElement('div');
      d.className = 'particle ' + s.states[i];
      d.dataset.step = t; d.dataset.index = i;
      d.style.left = x + 'px'; d.style.top = (TOP + i * H) + 'px';
      d.style.width = W + 'px'; d.style.height = (H - 6) + 'px';
      d.title = text;
      const tx = document.createElement('div');
      tx.className = 'text'; tx.textContent = text === '' ? '\\u00a0' : text;
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
})();
"""


def render(posterior: Posterior, title: str | None = None) -> str:
    """The HTML page of a recorded run (see the module docstring)."""
    if posterior.history is None:
        raise ValueError(
            "this posterior has no per-step record; run smc(..., record=True) (or "
            "importance/smc_steer with record=True) to make one for html()"
        )
    title = title or f"ppl {posterior.method} run"
    data = json.dumps({"steps": posterior.history}, allow_nan=False)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_html.escape(title)}</h1>"
        f"<div id='summary'>{_html.escape(posterior.summary())}</div>"
        "<div id='status'>needs JavaScript to draw the particles</div>"
        "<div id='run'></div>"
        f"<script type='application/json' id='ppl-data'>{data}</script>"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )
