"""The HTML view of a particle run: recorded by default, and drawn right in a real browser."""

from __future__ import annotations

import dataclasses
import html as _html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import ppl
import ppl.inference.html as html_view
import ppl.inference.record as record
from ppl import condition, factor, program, sample
from ppl.distributions import Bernoulli
from ppl.models import FunctionLM
from tests.inference.toy import letters, no_double_a

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs the chromium browser (Debian: chromium)"
)

# A toy model that lists Japanese cities after a question: its texts hold "Tokyo," (a comma
# after a word), which a right-to-left box would show as ",Tokyo".
PROMPT = "Q: Name cities in Japan & say <why>.\nA:"
CITIES = [" Tokyo", " Kyoto", " Osaka"]
VOCAB = ["<s>", PROMPT, *CITIES, ",", " and", ".", "<eos>"]
NEXT = {
    "<s>": {" Tokyo": 1.0},
    PROMPT: {" Tokyo": 0.7, " Osaka": 0.3},
    ",": {" Kyoto": 0.5, " Osaka": 0.3, " Tokyo": 0.2},
    " and": {" Kyoto": 0.6, " Osaka": 0.4},
    ".": {"<eos>": 1.0},
    **{city: {",": 0.6, " and": 0.2, ".": 0.2} for city in CITIES},
}
city_lm = FunctionLM(VOCAB, lambda prefix: NEXT[VOCAB[prefix[-1]]], eos="<eos>", bos="<s>")


@program
def cities(prompt=PROMPT, max_tokens=8):
    """Cities after the prompt, none named twice."""
    ctx = city_lm.context(prompt)
    for _ in range(max_tokens):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        condition(all(ctx.text.count(c) <= 1 for c in CITIES))
        if tok.is_eos:
            break
    return ctx.text


@program
def two_prompts():
    """A city after the question, then one after " Osaka": two contexts, two prompts."""
    first = city_lm.context(PROMPT)
    a = sample(first.next_token())
    second = city_lm.context(" Osaka")
    b = sample(second.next_token())
    return a.text + b.text


@program
def coin():
    """No language model at all."""
    heads = sample("heads", Bernoulli(0.3))
    factor(0.5 if heads else 0.0)
    return heads


RUNS = {
    "smc": lambda **kw: ppl.smc(cities, particles=6, seed=0, ess_threshold=1.0, **kw),
    "importance": lambda **kw: ppl.importance(cities, particles=6, seed=1, **kw),
    "smc_steer": lambda **kw: ppl.smc_steer(cities, particles=3, children=2, seed=2, **kw),
    "smc_rejuvenation": lambda **kw: ppl.smc(
        cities, particles=4, seed=3, ess_threshold=1.0, rejuvenation=ppl.MHKernel(), **kw
    ),
}


def chromium(tmp_path, *flags: str, url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            *flags,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- recording -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RUNS)
def test_runs_record_by_default_and_draw_without_asking(name, tmp_path):
    post = RUNS[name]()
    assert post.history is not None and len(post.history) == len(post.ess)
    assert post.history[0]["prompts"] == [PROMPT]
    page = post.html(str(tmp_path / "run.html"))
    assert (tmp_path / "run.html").read_text(encoding="utf-8") == page
    # the prompt, escaped, and every distinct final text of positive weight, readable as text
    assert "Q: Name cities in Japan &amp; say &lt;why&gt;.\nA:" in page
    last = post.history[-1]
    finals = page.split("id='finals'")[1].split("</table>")[0]
    for text, w in zip(last["texts"], last["weights"]):
        if w > 0:
            assert f"<div class='final-text'>{text}</div>" in finals
    assert "direction: rtl" not in page and "direction:rtl" not in page
    assert "id='legend'" in page and "class='ess-line'" in page


def test_record_false_keeps_none_and_html_says_how_to_get_one():
    for name, run in RUNS.items():
        post = run(record=False)
        assert post.history is None, name
        with pytest.raises(ValueError, match=r"record=False.*record=True"):
            post.html()
    with pytest.raises(ValueError, match=r"a mh run has no such steps.*ppl\.smc"):
        ppl.mh(cities, chains=1, steps=2, seed=0).html()
    with pytest.raises(TypeError, match="record must be True, False or None"):
        ppl.smc(cities, particles=2, seed=0, record="yes")


def test_the_automatic_rule_leaves_out_large_runs(monkeypatch):
    monkeypatch.setattr(record, "AUTO_PARTICLES", 4)
    assert ppl.smc(cities, particles=4, seed=0).history is not None
    big = ppl.smc(cities, particles=5, seed=0)
    assert big.history is None
    with pytest.raises(ValueError, match="more than 4 particles.*record=True"):
        big.html()
    assert ppl.smc(cities, particles=5, seed=0, record=True).history is not None


def test_the_automatic_rule_drops_a_record_that_grows_too_big(monkeypatch):
    monkeypatch.setattr(record, "AUTO_BYTES", 1500)
    post = ppl.smc(cities, particles=6, seed=0, ess_threshold=1.0)
    assert post.history is None
    assert "dropped at step" in post.diagnostics["record"]
    with pytest.raises(ValueError, match="dropped at step .*record=True"):
        post.html()
    kept = ppl.smc(cities, particles=6, seed=0, ess_threshold=1.0, record=True)
    assert kept.history is not None and same_values(kept, post)


def same_values(a: ppl.Posterior, b: ppl.Posterior) -> bool:
    return a.values == b.values and a.log_weights.tolist() == b.log_weights.tolist()


def test_recording_changes_nothing_else():
    for run in RUNS.values():
        assert same_values(run(), run(record=False))


def test_prompts_of_several_contexts_and_of_none():
    post = ppl.smc(two_prompts, particles=3, seed=0)
    assert [p for s in post.history for p in s["prompts"]] == [PROMPT, " Osaka"]
    page = post.html()
    assert "Prompts (2 distinct)" in page and "first met at step 1" in page
    page = ppl.smc(coin, particles=4, seed=0).html()
    assert "no language-model context was met" in page


def test_a_saved_run_draws_the_same_page():
    post = RUNS["smc"]()
    back = ppl.Posterior.from_dict(json.loads(json.dumps(post.to_dict())))
    assert back.html(title="t") == post.html(title="t")


def test_map_keeps_no_record_unless_asked(tmp_path):
    inputs = [(PROMPT,), (PROMPT, 3)]
    path = tmp_path / "run.jsonl"
    results = ppl.map(ppl.smc, cities, inputs, particles=3, checkpoint=str(path))
    assert all(r.history is None for r in results)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(line["posterior"]["history"] is None for line in lines)
    with pytest.raises(ValueError, match="record=True"):
        results[0].html()
    kept = ppl.map(ppl.smc, cities, inputs, particles=3, record=True)
    assert all(r.history is not None for r in kept)
    assert same_values(kept[0], results[0])


def test_html_is_self_contained(tmp_path):
    post = ppl.smc(no_double_a, particles=6, seed=2, ess_threshold=1.0, record=True)
    page = post.html(str(tmp_path / "run.html"))
    assert (tmp_path / "run.html").read_text(encoding="utf-8") == page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<link" not in page and " src=" not in page


# -- in a browser --------------------------------------------------------------------------------


@needs_chromium
def test_page_renders_particles_and_ancestry_in_headless_chromium(tmp_path):
    post = ppl.smc(no_double_a, particles=6, seed=2, ess_threshold=1.0, record=True)
    assert post.resampled
    path = tmp_path / "run.html"
    post.html(str(path), title="toy <run> & co")
    result = chromium(tmp_path, "--dump-dom", url=path.as_uri())
    dom = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    steps = len(post.history)
    # the inline script ran and drew one box per particle per step
    assert f"rendered {steps} steps of 6 particles" in dom
    assert len(re.findall(r'class="particle ', dom)) == 6 * steps
    # ancestry: one line per particle between consecutive steps; resampling lines marked
    lines = re.findall(r'<line class="ancestry( resample)?"', dom)
    assert len(lines) == 6 * (steps - 1)
    resample_lines = re.findall(r'class="ancestry resample"[^>]*data-parent="(\d+)"', dom)
    assert len(resample_lines) == 6 * len(post.resampled)
    first = post.history[post.resampled[0]]["parents"]
    assert sorted(int(p) for p in resample_lines[:6]) == sorted(first)
    # final texts and the escaped title
    for text in post.history[-1]["texts"]:
        if text:
            assert f'title="{text}"' in dom
    assert "toy &lt;run&gt; &amp; co" in dom


# Appended to a copy of the page: for every shown text holding "Tokyo,", is the comma drawn to
# the right of the "T" (left to right), or to its left (a right-to-left box)?
ORDER_CHECK = """<script>
(function () {
  const out = [];
  document.querySelectorAll('.particle .text, .final-text').forEach(function (el) {
    const node = el.firstChild;
    if (!node || node.nodeType !== 3) return;
    const i = node.textContent.indexOf('Tokyo,');
    if (i < 0) return;
    const r = document.createRange();
    r.setStart(node, i); r.setEnd(node, i + 1);
    const t = r.getBoundingClientRect().left;
    r.setStart(node, i + 5); r.setEnd(node, i + 6);
    out.push(r.getBoundingClientRect().left > t ? 'ltr' : 'rtl');
  });
  const d = document.createElement('div');
  d.id = 'order-check'; d.textContent = out.join(' ');
  document.body.appendChild(d);
})();
</script></body>"""


@needs_chromium
def test_page_shows_prompt_legend_strip_and_text_in_order_in_chromium(tmp_path):
    post = ppl.smc(cities, particles=6, seed=0, ess_threshold=1.0)
    texts = [t for s in post.history for t in s["texts"]]
    assert any("Tokyo," in t for t in texts)
    path = tmp_path / "run.html"
    path.write_text(post.html().replace("</body>", ORDER_CHECK), encoding="utf-8")
    result = chromium(tmp_path, "--dump-dom", url=path.as_uri())
    dom = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    steps = len(post.history)
    assert f"rendered {steps} steps of 6 particles" in dom
    # the prompt, as text of the page
    prompt = re.search(r'<div class="prompt">(.*?)</div>', dom, re.S)
    assert prompt and prompt[1] == "Q: Name cities in Japan &amp; say &lt;why&gt;.\nA:"
    # text reads left to right: in the DOM and as drawn
    order = re.search(r'<div id="order-check">([^<]*)</div>', dom)[1].split()
    assert order and set(order) == {"ltr"}, order
    assert ",Tokyo" not in dom
    # the legend and the strip: ESS and log Z lines, the threshold, a mark per resampling
    assert len(re.findall(r'<span class="swatch', dom)) == len(html_view._LEGEND)
    assert re.search(r'<svg class="strip" id="strip"', dom)
    points = r'<polyline class="ess-line" points="([\d.]+,[\d.]+ ?){' + str(steps) + '}"'
    assert re.search(points, dom)
    assert '<polyline class="logz-line"' in dom and '<line class="threshold"' in dom
    assert len(re.findall(r'<line class="resample-mark"', dom)) == len(post.resampled)
    # the final texts, in full
    assert re.search(r'<div class="final-text"> Tokyo, Kyoto\.</div>', dom)


@needs_chromium
def test_screenshot_of_the_page_is_not_blank(tmp_path):
    from PIL import Image

    post = ppl.smc(cities, particles=6, seed=0, ess_threshold=1.0)
    path = tmp_path / "run.html"
    post.html(str(path))
    shot = tmp_path / "run.png"
    result = chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1200,1400", url=path.as_uri()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 1400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 16
    # not one colour with specks: the most common (the background) covers less than 97%
    assert max(k for k, _ in colours) < 0.97 * 1200 * 1400


# -- the strip's threshold label and the grid's scroll hint, measured in Chromium ----------------

# Appended to a page holding several strips: for each, the box of the "resample below" label as
# drawn, and how many points of the ESS path (sampled every half pixel, its corners and its dots)
# fall in it, widened by half the stroke (or the dot's radius).
LABEL_CHECK = """<script>
(function () {
  const out = [];
  document.querySelectorAll('svg.strip').forEach(function (svg) {
    const label = Array.from(svg.querySelectorAll('text')).find(function (t) {
      return t.textContent.startsWith('resample below');
    });
    const line = svg.querySelector('polyline.ess-line');
    const b = label.getBBox();
    function inside(x, y, r) {
      return x + r >= b.x && x - r <= b.x + b.width && y + r >= b.y && y - r <= b.y + b.height;
    }
    let hits = 0;
    const length = line.getTotalLength();
    for (let s = 0; s <= length; s += 0.5) {
      const p = line.getPointAtLength(s);
      if (inside(p.x, p.y, 0.75)) hits++;
    }
    for (const p of line.points) if (inside(p.x, p.y, 0.75)) hits++;
    svg.querySelectorAll('circle').forEach(function (c) {
      if (c.getAttribute('fill') === '#36c' && inside(c.cx.baseVal.value, c.cy.baseVal.value,
          c.r.baseVal.value)) hits++;
    });
    out.push({hits: hits, box: [b.x, b.y, b.width, b.height], text: label.textContent,
      margin: !!svg.querySelector('.threshold-key'), width: +svg.getAttribute('width')});
  });
  const d = document.createElement('div');
  d.id = 'label-check'; d.textContent = JSON.stringify(out);
  document.body.appendChild(d);
})();
</script></body>"""


def _strips(page: str) -> list[str]:
    return re.findall(r"<svg class='strip'.*?</svg>", page, re.S)


@needs_chromium
def test_threshold_label_keeps_off_the_ess_line_in_chromium(tmp_path):
    hover = ppl.smc(letters, 14, 0.9, particles=8, seed=3, ess_threshold=0.8)
    level = 0.8 * 8
    runs = {
        "hovers at the threshold": hover,
        "at the threshold exactly": dataclasses.replace(hover, ess=np.full(len(hover.ess), level)),
        "crosses it at every step": dataclasses.replace(
            hover, ess=np.where(np.arange(len(hover.ess)) % 2 == 0, 8.0, 2.0)
        ),
        "at N, threshold N": ppl.smc(letters, 12, 0.0, particles=8, seed=0, ess_threshold=1.0),
        "falls to 1": ppl.smc(letters, 12, 6.0, particles=8, seed=0),
        "41 steps": ppl.smc(letters, 41, 1.0, particles=6, seed=0),
        "cities": RUNS["smc"](),
    }
    pages = [post.html() for post in runs.values()]
    strips = [_strips(page)[0] for page in pages]
    path = tmp_path / "strips.html"
    page = pages[0].replace("</body>", "".join(strips[1:]) + LABEL_CHECK)
    path.write_text(page, encoding="utf-8")
    result = chromium(tmp_path, "--dump-dom", url=path.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<div id="label-check">([^<]*)</div>', result.stdout)
    checks = json.loads(_html.unescape(found[1]))
    assert len(checks) == len(runs)
    for name, check in zip(runs, checks):
        x, y, w, h = check["box"]
        assert check["hits"] == 0, (name, check)
        # inside the strip, and within the box the page reserved for it
        assert 0 <= x and x + w <= check["width"] and 0 <= y, (name, check)
        assert w <= html_view._CHAR_W * len(check["text"]), (name, check)
        assert h <= html_view._ASCENT + html_view._DESCENT, (name, check)
    # both ways are taken: by the threshold line where there is room, else in the margin
    margin = {name for name, check in zip(runs, checks) if check["margin"]}
    assert "at the threshold exactly" in margin and "at N, threshold N" in margin
    assert "falls to 1" not in margin and "41 steps" not in margin


# Appended to a page: whether the scroll hint above the particle grid is shown, and its text.
HINT_CHECK = """<script>
(function () {
  const hint = document.getElementById('run-hint');
  const scroller = document.getElementById('run-scroll');
  const r = hint.getBoundingClientRect();
  const d = document.createElement('div');
  d.id = 'hint-check';
  d.textContent = JSON.stringify({
    shown: !hint.hidden && getComputedStyle(hint).display !== 'none' && r.width > 0 &&
      r.height > 0,
    fade: !document.getElementById('run-fade').hidden,
    text: hint.textContent,
    overflows: scroller.scrollWidth > scroller.clientWidth,
    page_scrolls: document.documentElement.scrollWidth > window.innerWidth,
  });
  document.body.appendChild(d);
})();
</script></body>"""


@needs_chromium
def test_a_grid_wider_than_the_window_says_to_scroll_sideways_in_chromium(tmp_path):
    long = ppl.smc(letters, 41, 1.0, particles=4, seed=0)
    short = ppl.smc(letters, 2, 1.0, particles=4, seed=0)
    assert len(long.history) == 42 and len(short.history) == 3

    def check(post, window):
        path = tmp_path / "run.html"
        path.write_text(post.html().replace("</body>", HINT_CHECK), encoding="utf-8")
        result = chromium(tmp_path, "--dump-dom", f"--window-size={window}", url=path.as_uri())
        assert result.returncode == 0, result.stderr[-2000:]
        found = re.search(r'<div id="hint-check">([^<]*)</div>', result.stdout)
        return json.loads(_html.unescape(found[1]))

    wide = check(long, "1200,900")
    assert wide["overflows"] and wide["shown"] and wide["fade"], wide
    assert wide["text"].startswith("42 steps, wider than the window: steps 0\u20134 in view")
    assert "\u2192 for steps 5\u201341" in wide["text"], wide
    assert not wide["page_scrolls"], wide  # the grid scrolls in its frame, not the whole page
    fits = check(short, "1200,900")
    assert not fits["overflows"] and not fits["shown"] and not fits["fade"], fits
    narrow = check(short, "500,900")  # the same grid, a narrow window: it overflows now
    assert narrow["overflows"] and narrow["shown"], narrow
    assert "\u2192 for step" in narrow["text"], narrow
