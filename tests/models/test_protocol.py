"""A backend that returns the wrong thing from its batched call gets an error naming the protocol.

Each model below breaks the `LanguageModel` protocol in one way (`_extend`, `_extend_scored` or
an overridden `compute_logprobs`); running a tiny program on it with `ppl.smc` or
`ppl.importance` must raise a `TypeError` that names the method, what it must return and what
it returned, not an `AttributeError` or unpacking error from inside the engine.
"""

import pytest
import torch

import ppl
from ppl.models import FunctionLM
from ppl.models.base import Fed

VOCAB = ["a", "b", "<eos>"]


def uniform(prefix):
    return [1.0, 1.0, 0.0]  # never EOS: every text is two letters


class Returns(FunctionLM):
    """A three-token model whose `_extend` returns `wrong(states, logprobs)` instead."""

    def __init__(self, wrong):
        super().__init__(VOCAB, uniform, eos="<eos>")
        self.wrong = wrong

    def _extend(self, parents, new_tokens):
        return self.wrong(*super()._extend(parents, new_tokens))


@ppl.program
def two_tokens(lm):
    ctx = lm.context("a")
    for _ in range(2):
        ctx = ctx + ppl.sample(ctx.next_token())
    return ctx.text


@ppl.program
def continuation(lm):
    ctx = lm.context("a")
    ppl.observe(ctx.continuation(), "ba")  # scores a continuation of two tokens
    return ctx.text


BROKEN = {
    "None": (lambda states, lp: None, "None"),
    "logprobs only": (lambda states, lp: lp, r"a torch.float32 tensor of shape \[1, 3\]"),
    "a row too few": (
        lambda states, lp: (states, lp[0]),
        r"a tuple of 2 \(a list of 1, a torch.float32 tensor of shape \[3\]\)",
    ),
    "logprobs as a list": (
        lambda states, lp: (states, lp.tolist()),
        r"a tuple of 2 \(a list of 1, a list of 1\)",
    ),
    "vocabulary transposed": (
        lambda states, lp: (states, lp.T),
        r"a tuple of 2 \(a list of 1, a torch.float32 tensor of shape \[3, 1\]\)",
    ),
    "states missing": (
        lambda states, lp: ([], lp),
        r"a tuple of 2 \(a list of 0, a torch.float32 tensor of shape \[1, 3\]\)",
    ),
    "integer logprobs": (
        lambda states, lp: (states, lp.long()),
        r"a tuple of 2 \(a list of 1, a torch.int64 tensor of shape \[1, 3\]\)",
    ),
    "three parts": (
        lambda states, lp: (states, lp, None),
        r"a tuple of 3 \(a list of 1, a torch.float32 tensor of shape \[1, 3\], None\)",
    ),
}


@pytest.mark.parametrize("method", [ppl.smc, ppl.importance], ids=["smc", "importance"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_extend_returning_the_wrong_thing_names_the_protocol(case, method):
    wrong, returned = BROKEN[case]
    lm = Returns(wrong)
    message = (
        r"Returns\._extend broke the LanguageModel protocol: it must return \(states, "
        r"log-probabilities tensor of shape \[rows, vocab_size\]\), here a list of 1 states and "
        r"a float tensor of shape \[1, 3\]; it returned " + returned + "$"
    )
    with pytest.raises(TypeError, match=message):
        method(two_tokens, lm, particles=4, seed=0)


def test_a_list_for_the_tuple_is_accepted():
    lm = Returns(lambda states, lp: [states, lp])
    post = ppl.smc(two_tokens, lm, particles=4, seed=0)
    assert all(len(v) == 2 for v in post.values)


def test_extend_scored_returning_the_wrong_thing_names_the_protocol():
    class ScoresMissing(FunctionLM):
        def _extend_scored(self, parents, new_tokens, score):
            return self._extend(parents, new_tokens)  # no scores

    lm = ScoresMissing(VOCAB, uniform, eos="<eos>")
    message = (
        r"ScoresMissing\._extend_scored broke the LanguageModel protocol: it must return "
        r"\(states, log-probabilities tensor of shape \[rows, vocab_size\], scores\), here a "
        r"list of 1 states, a float tensor of shape \[1, 3\] and a list of 1 scores \(tensor or "
        r"None\); it returned a tuple of 2 \(a list of 1, a torch.float32 tensor of shape "
        r"\[1, 3\]\)$"
    )
    with pytest.raises(TypeError, match=message):
        ppl.importance(continuation, lm, particles=2, seed=0)


def test_the_scoring_fallback_checks_extend():
    """The base class scores through `_extend` when a backend has no `_extend_scored`."""

    class NoScoring(Returns):
        _extend_scored = ppl.models.LanguageModel._extend_scored

    with pytest.raises(TypeError, match=r"^NoScoring\._extend broke .* it returned None$"):
        ppl.importance(continuation, NoScoring(lambda states, lp: None), particles=2, seed=0)


def test_under_map_the_item_gets_the_error():
    lm = Returns(lambda states, lp: None)
    with pytest.warns(ppl.InferenceWarning, match=r"Returns\._extend broke the LanguageModel"):
        results = ppl.map(ppl.smc, two_tokens, [(lm,)], particles=4)
    assert results.failures[0].error.startswith("TypeError: Returns._extend broke")


class FeedsNothing(FunctionLM):
    """Overrides `compute_logprobs`, setting every row by hand, and returns `result`."""

    def __init__(self, result):
        super().__init__(VOCAB, uniform, eos="<eos>")
        self.result = result

    def compute_logprobs(self, contexts, *, max_rows=None):
        row = torch.tensor([0.5, 0.5, 0.0]).log()  # never EOS
        for ctx in contexts:
            if ctx._logprobs is None:
                ctx._set_fed(None, row)
        return self.result


@pytest.mark.parametrize(
    "result, returned",
    [(None, "None"), ((1, 0), r"a tuple of 2 \(an int, an int\)"), (1, "an int")],
    ids=["None", "plain tuple", "int"],
)
@pytest.mark.parametrize("method", [ppl.smc, ppl.importance], ids=["smc", "importance"])
def test_compute_logprobs_returning_the_wrong_thing_names_the_protocol(method, result, returned):
    message = (
        r"FeedsNothing\.compute_logprobs broke the LanguageModel protocol: it must feed the "
        r"contexts and return what that cost, a ppl\.models\.base\.Fed\(calls, tokens\); it "
        r"returned " + returned + "$"
    )
    with pytest.raises(TypeError, match=message):
        method(two_tokens, FeedsNothing(result), particles=4, seed=0)


def test_compute_logprobs_returning_fed_runs():
    post = ppl.smc(two_tokens, FeedsNothing(Fed(1, 0)), particles=4, seed=0)
    assert all(len(v) == 2 for v in post.values)
    assert post.stats["forward_calls"] == 2
