"""The HTML view of an SMC run renders its particles and their ancestry in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import ppl
from tests.inference.toy import no_double_a

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_is_self_contained(tmp_path):
    post = ppl.smc(no_double_a, particles=6, seed=2, ess_threshold=1.0, record=True)
    page = post.html(str(tmp_path / "run.html"))
    assert (tmp_path / "run.html").read_text(encoding="utf-8") == page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<link" not in page and " src=" not in page


@pytest.mark.skipif(CHROMIUM is None, reason="needs the chromium browser (Debian: chromium)")
def test_page_renders_particles_and_ancestry_in_headless_chromium(tmp_path):
    post = ppl.smc(no_double_a, particles=6, seed=2, ess_threshold=1.0, record=True)
    assert post.resampled
    path = tmp_path / "run.html"
    post.html(str(path), title="toy <run> & co")
    result = subprocess.run(
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
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
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
