"""`Posterior.plot` for every kind of run: titled, labelled panels that say something."""

import sys

import matplotlib
import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl import observe, program, sample
from tests.inference.toy import letters, no_double_a, rated_text

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402


@program
def gaussian(y):
    x = sample("x", nd.Normal(0.0, 1.0))
    observe(nd.Normal(x, 1.0), y)
    return x


RUNS = {
    "smc": lambda: ppl.smc(no_double_a, particles=16, seed=1, ess_threshold=0.9),
    "smc_steer": lambda: ppl.smc_steer(no_double_a, particles=4, seed=0),
    "importance": lambda: ppl.importance(rated_text, particles=32, seed=0),
    "mh": lambda: ppl.mh(rated_text, chains=3, steps=20, seed=0),
    "pimh": lambda: ppl.pimh(no_double_a, particles=4, steps=10, seed=0),
    "pgibbs": lambda: ppl.pgibbs(rated_text, particles=4, steps=10, seed=0),
    "nuts": lambda: ppl.nuts(gaussian, 1.0, samples=40, warmup=20, seed=0),
}


@pytest.fixture
def figure():
    """Call with a Posterior; the figure is closed after the test."""
    made = []

    def plot(post, path=None):
        fig = post.plot(path)
        made.append(fig)
        return fig

    yield plot
    for fig in made:
        plt.close(fig)


@pytest.mark.parametrize("method", sorted(RUNS))
def test_every_panel_has_a_title_and_labelled_axes(method, figure):
    fig = figure(RUNS[method]())
    assert len(fig.axes) >= 2
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert fig.axes[0].get_title().startswith(method)


def test_smc_ess_has_the_threshold_line_and_resampling_marks(figure):
    post = RUNS["smc"]()
    assert post.stats["ess_threshold"] == 0.9
    assert post.resampled  # the run resampled, so the marks have something to mark
    ax = figure(post).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    threshold = lines["resampling threshold 0.9 x N"]
    assert np.allclose(threshold.get_ydata(), 0.9 * 16)
    assert np.allclose(lines["particles N = 16"].get_ydata(), 16)
    marks = lines["resampled here"]
    assert list(marks.get_xdata()) == post.resampled
    assert np.allclose(marks.get_ydata(), post.ess[post.resampled])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "resampling threshold 0.9 x N" in legend and "resampled here" in legend
    assert "log" in figure(post).axes[1].get_title()


def test_smc_without_resampling_has_no_threshold_line(figure):
    post = ppl.smc(no_double_a, particles=8, seed=0, ess_threshold=0.0)
    ax = figure(post).axes[0]
    assert not any("threshold" in line.get_label() for line in ax.get_lines())


# Runs of several shapes: the legend must stay off the ESS of every one of them
SHAPES = {
    "ESS at N throughout": lambda: ppl.smc(letters, 12, 0.0, particles=8, seed=0),
    "ESS at N, threshold N": lambda: ppl.smc(
        letters, 12, 0.0, particles=8, seed=0, ess_threshold=1.0
    ),
    "ESS falls to 1, resampled": lambda: ppl.smc(letters, 12, 6.0, particles=8, seed=0),
    "60 steps": lambda: ppl.smc(letters, 60, 1.0, particles=16, seed=0),
    "2 steps": lambda: ppl.smc(letters, 2, 1.5, particles=8, seed=0),
    "smc_steer": lambda: ppl.smc_steer(no_double_a, particles=4, seed=0),
}


def _points_on(line, step_px=2.0):
    """Display coordinates of a line's points and, when drawn joined, of its segments every
    `step_px` pixels."""
    xy = line.get_transform().transform(line.get_xydata())
    if line.get_linestyle() in ("None", "none", "", " ") or len(xy) < 2:
        return xy
    out = [xy[:1]]
    for a, b in zip(xy[:-1], xy[1:]):
        k = max(1, int(np.hypot(*(b - a)) / step_px))
        out.append(a + (b - a) * np.linspace(0, 1, k + 1)[1:, None])
    return np.concatenate(out)


@pytest.mark.parametrize("shape", SHAPES)
def test_smc_legend_covers_no_data(shape, figure, tmp_path):
    post = SHAPES[shape]()
    fig = figure(post, str(tmp_path / "run.png"))  # saved: drawn with its final layout
    legend = fig.axes[0].get_legend()
    box = legend.get_window_extent()
    # whole, inside the saved figure
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, (box, fig.bbox)
    assert fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1, (box, fig.bbox)
    # no point of any line, the ESS above all (nor of any segment between them) under it
    ess_line = next(line for line in fig.axes[0].get_lines() if line.get_label() == "ESS")
    assert len(ess_line.get_xydata()) == len(post.ess)
    for ax in fig.axes:
        for line in ax.get_lines():
            xy = _points_on(line)
            inside = (
                (xy[:, 0] >= box.x0 - 2)
                & (xy[:, 0] <= box.x1 + 2)
                & (xy[:, 1] >= box.y0 - 2)
                & (xy[:, 1] <= box.y1 + 2)
            )
            assert not inside.any(), (shape, line.get_label(), xy[inside][:3], box)
        # nor the panels themselves: the legend stands beside them
        assert not box.overlaps(ax.get_window_extent()), (shape, ax.get_title())


def test_importance_is_a_histogram_of_normalised_weights(figure):
    post = RUNS["importance"]()
    ax = figure(post).axes[0]
    assert f"N = {post.num_particles}" in ax.get_title()
    assert f"ESS = {post.final_ess:.1f}" in ax.get_title()
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 1
    assert sum(p.get_height() for p in bars[0]) == np.isfinite(post.log_weights).sum()


def test_importance_with_only_zero_weights_still_plots(figure):
    from ppl import condition

    @program
    def never():
        condition(False)
        return 0

    with pytest.warns(ppl.InferenceWarning):
        post = ppl.importance(never, particles=4, seed=0)
    fig = figure(post)
    assert "4 with zero weight" in fig.axes[0].get_title()


@pytest.mark.parametrize("method", ["mh", "pimh", "pgibbs", "nuts"])
def test_mcmc_gives_a_trace_per_chain_and_the_acceptance(method, figure):
    post = RUNS[method]()
    fig = figure(post)
    *traces, acc = fig.axes
    chains = post.stats["chains"]
    for ax in traces:
        assert "trace of" in ax.get_title()
        assert len(ax.get_lines()) == chains
        assert all(len(line.get_xdata()) == post.stats["steps"] for line in ax.get_lines())
    assert acc.get_xlabel() == "chain"
    heights = [p.get_height() for p in acc.patches]
    assert np.allclose(heights, post.acceptance)


def test_mcmc_traces_what_is_numeric(figure):
    # rated_text returns (text, rate): the named choice "rate" is traced
    titles = [ax.get_title() for ax in figure(RUNS["mh"]()).axes]
    assert titles[0] == "mh: trace of rate per chain"
    # no_double_a returns a text and names no choice: the log probability of the choices
    post = ppl.mh(no_double_a, chains=2, steps=10, seed=0)
    ax = figure(post).axes[0]
    assert ax.get_ylabel() == "log p(choices)"
    expected = [sum(c.log_prob for c in t) for t in post.traces[:10]]
    assert np.allclose(ax.get_lines()[0].get_ydata(), expected)
    # nuts returns x itself: one panel, not two of the same series
    assert [ax.get_ylabel() for ax in figure(RUNS["nuts"]()).axes] == [
        "return value",
        "acceptance rate",
    ]


def test_saving_writes_a_png(tmp_path, figure):
    for method in ("smc", "importance", "mh"):
        path = tmp_path / f"{method}.png"
        figure(RUNS[method](), str(path))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 1000


def test_without_matplotlib_the_error_says_what_to_install(monkeypatch):
    post = RUNS["smc"]()
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install matplotlib .*pip install -e '\.\[plot\]'"):
        post.plot()
