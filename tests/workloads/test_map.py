"""`ppl.map` and `ppl.imap`: the same runs as the per-item calls, whatever the batching."""

from __future__ import annotations

import numpyro.distributions as nd
import pytest

import ppl
from ppl import observe, program, sample
from ppl.workloads import ItemError, Results
from ppl.workloads.batch import SharedSteps
from tests.workloads.toy import INPUTS, letters, lm, same_run, with_lm

METHODS = [
    (ppl.smc, {"particles": 5}),
    (ppl.importance, {"particles": 4}),
    (ppl.mh, {"chains": 2, "steps": 6}),
    (ppl.smc_steer, {"particles": 2, "children": 2}),
    (ppl.pimh, {"particles": 3, "steps": 3}),
    (ppl.pgibbs, {"particles": 3, "steps": 3}),
]


@pytest.mark.parametrize("method,options", METHODS, ids=lambda x: getattr(x, "__name__", ""))
@pytest.mark.parametrize("rows", [1, 7, None])
def test_map_is_the_per_item_calls(method, options, rows):
    alone = [method(letters, *args, seed=(3, i), **options) for i, args in enumerate(INPUTS)]
    mapped = ppl.map(method, letters, INPUTS, seed=3, rows=rows, **options)
    assert isinstance(mapped, Results) and mapped.ok and len(mapped) == len(INPUTS)
    for i, (a, b) in enumerate(zip(alone, mapped)):
        assert same_run(a, b), f"item {i} differs"


@program
def shifted(offset):
    x = sample("x", nd.Normal(0.0, 1.0))
    observe(nd.Normal(x, 1.0), offset)
    return x


def test_map_runs_nuts_items_as_the_per_item_calls():
    inputs = [(0.5,), (2.0,)]
    alone = [
        ppl.nuts(shifted, *x, samples=20, warmup=20, seed=(1, i)) for i, x in enumerate(inputs)
    ]
    mapped = ppl.map(ppl.nuts, shifted, inputs, seed=1, samples=20, warmup=20)
    for a, b in zip(alone, mapped):
        assert a.values == b.values


def test_items_in_flight_share_model_calls():
    options = {"particles": 5}
    lm.reset_counters()
    alone = [ppl.smc(letters, *args, seed=(0, i), **options) for i, args in enumerate(INPUTS)]
    calls_alone = lm.forward_calls
    lm.reset_counters()
    mapped = ppl.map(ppl.smc, letters, INPUTS, rows=None, **options)
    # one shared call per step of the longest run, not one per step of every run
    assert mapped.stats["forward_calls"] == lm.forward_calls
    assert lm.forward_calls == max(p.stats["steps"] for p in alone)
    assert lm.forward_calls < calls_alone / 5
    # every token is still fed once: the per-item counts add up to the model's
    assert sum(p.stats["tokens_fed"] for p in mapped) == lm.tokens_fed
    assert lm.tokens_fed <= sum(p.stats["tokens_fed"] for p in alone)


def test_row_budget_bounds_every_forward_pass():
    sizes = []
    original = lm.extend

    def extend(parents, new_tokens):
        sizes.append(len(parents))
        return original(parents, new_tokens)

    lm.extend = extend
    try:
        ppl.map(ppl.smc, letters, INPUTS, rows=12, particles=5)  # two items in flight
        assert 5 < max(sizes) <= 12  # rows of both items share a pass
        sizes.clear()
        ppl.map(ppl.smc, letters, INPUTS, rows=3, particles=5)  # one item, in passes of 3
        assert max(sizes) == 3
    finally:
        del lm.extend


def test_imap_yields_every_index_once_as_items_finish():
    seen = [i for i, _ in ppl.imap(ppl.smc, letters, INPUTS, particles=3, in_flight=4)]
    assert sorted(seen) == list(range(len(INPUTS)))
    assert seen != list(range(len(INPUTS)))  # short runs finish before long ones started earlier


def test_a_failing_item_is_recorded_and_the_rest_complete():
    inputs = [("ab",), ("cbc",), ("ba",)]
    with pytest.warns(ppl.InferenceWarning, match="1 of 3 items raised"):
        out = ppl.map(ppl.smc, letters, inputs, particles=4)
    assert isinstance(out[1], ItemError) and out[1].index == 1
    assert out[1].error == "ValueError: this input always fails"
    assert "this input always fails" in out[1].traceback and "letters" in out[1].traceback
    assert out.failures == [out[1]] and not out.ok
    assert same_run(out[2], ppl.smc(letters, "ba", particles=4, seed=(0, 2)))


def test_on_error_raise_stops_with_the_items_exception():
    with pytest.raises(ValueError, match="always fails") as info:
        ppl.map(ppl.smc, letters, [("ab",), ("cbc",)], particles=2, on_error="raise")
    assert any("item 1" in note for note in getattr(info.value, "__notes__", []))


def test_keyword_inputs_and_model_given_as_lm():
    inputs = [{"prompt": "ab", "n": 2}, ("ba", 3)]
    out = ppl.map(ppl.importance, with_lm, inputs, model=lm, particles=3)
    assert same_run(out[0], ppl.importance(with_lm, lm, "ab", n=2, particles=3, seed=(0, 0)))
    assert same_run(out[1], ppl.importance(with_lm, lm, "ba", 3, particles=3, seed=(0, 1)))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: ppl.map(ppl.smc, letters, ["ab"]), r"input 0 is a str.*\('ab',\)"),
        (lambda: ppl.map(ppl.smc, letters, "ab"), "got a single str"),
        (lambda: ppl.map(ppl.smc, letters, INPUTS, particle=3), "no option 'particle'"),
        (
            lambda: ppl.map(ppl.smc, letters, INPUTS, seed=-1),
            "seed must be a non-negative integer, a tuple",
        ),
        (lambda: ppl.map(ppl.smc, letters, [{"particles": 3}]), "options of smc"),
        (lambda: ppl.map(ppl.smc, letters, INPUTS, model=lm), "no parameter named lm"),
        (lambda: ppl.map(ppl.smc, letters.fn, INPUTS), "must be a @ppl.program"),
        (lambda: ppl.map(ppl.smc, letters, INPUTS, rows=0), "rows must be a positive"),
        (lambda: ppl.map(ppl.smc, letters, INPUTS, on_error="ignore"), "on_error"),
    ],
)
def test_mistakes_fail_before_any_item_runs(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()


def test_unseeded_map_runs():
    out = ppl.map(ppl.importance, with_lm, INPUTS[:3], seed=None, model=lm, particles=2)
    assert out.ok and all(p.stats["seed"] is not None for p in out)
    assert all(len(v) <= 4 for p in out for v in p.values)


def test_shared_steps_pass_errors_of_the_model_to_the_item_that_caused_them():
    other = type(lm)(["x", "<eos>"], lambda prefix: [1.0, 1.0], eos="<eos>")
    steps = SharedSteps(rows=None, in_flight=3)
    good = lm.context("ab")
    bad = other.context("x")

    def job(ctx):
        return lambda: lm.compute_logprobs([ctx])

    out = dict(steps.run([(0, job(good)), (1, job(bad)), (2, job(lm.context("ba")))]))
    assert out[0].error is None and out[2].error is None
    assert isinstance(out[1].error, ValueError) and "another language model" in str(out[1].error)
    assert good._logprobs is not None


def test_a_tuple_seed_extends_to_each_item():
    mapped = ppl.map(ppl.smc, letters, INPUTS[:3], seed=(4, 2), particles=3)
    for i, args in enumerate(INPUTS[:3]):
        assert same_run(mapped[i], ppl.smc(letters, *args, seed=(4, 2, i), particles=3))


def test_the_bar_over_items_moves_inside_the_items_in_flight(monkeypatch):
    from ppl.inference import progress
    from ppl.workloads import run as map_module

    monkeypatch.setattr(progress, "INTERVAL", 0.0)  # every report is drawn
    monkeypatch.setattr(map_module, "INTERVAL", 0.0)
    drawn = []
    draw = map_module._MapBar._draw

    def spy(self, force=False):
        draw(self, force)
        drawn.append((self._bar.n, self._bar.postfix or ""))

    monkeypatch.setattr(map_module._MapBar, "_draw", spy)
    out = ppl.map(ppl.smc, letters, INPUTS[:6], particles=4, progress=True)  # all 6 in flight
    assert out.ok
    before = [(n, text) for n, text in drawn if n < 1]  # before the first item finished
    assert any(0 < n < 1 for n, _ in before), "the bar moved before an item finished"
    assert any(text.startswith("6 in flight; item 0: step ") for _, text in before)
    assert drawn[-1][0] == 6
    assert [n for n, _ in drawn] == sorted(n for n, _ in drawn), "it never moves back"


def test_map_options_are_the_keyword_parameters_of_map_and_imap():
    """`MapOptions.of(locals())` holds a call's options: its fields are the keyword parameters
    of `map` and of `imap`, in order, then their `**options`."""
    import dataclasses
    import inspect

    from ppl.workloads.run import MapOptions

    names = [field.name for field in dataclasses.fields(MapOptions)]
    for entry in (ppl.map, ppl.imap):
        params = inspect.signature(entry).parameters.values()
        own = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD)]
        assert own == names, entry.__name__


def test_imap_takes_exactly_the_arguments_of_map():
    import inspect

    assert list(inspect.signature(ppl.imap).parameters) == list(
        inspect.signature(ppl.map).parameters
    )
    with pytest.raises(TypeError, match="ppl.imap: missing a required argument: 'inputs'"):
        ppl.imap(ppl.smc, letters)
    with pytest.raises(TypeError, match="ppl.imap: too many positional arguments"):
        ppl.imap(ppl.smc, letters, INPUTS, 0)
    # keywords reach the run as they do through map: the same items, the same seeds
    running = ppl.imap(ppl.smc, letters, INPUTS[:2], seed=3, particles=3)
    for i, post in running:
        assert same_run(post, ppl.smc(letters, *INPUTS[i], seed=(3, i), particles=3))
