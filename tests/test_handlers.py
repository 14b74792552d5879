"""Effect handlers for direct runs: each does one thing, composes, and has a working doctest."""

import doctest
import math

import pytest

import ppl
import ppl.handlers
from ppl import factor, observe, program, sample
from ppl.distributions import Bernoulli, Categorical
from ppl.handlers import block, condition, replay, scale, seed, trace
from ppl.models.toy import FunctionLM

DIGIT = Categorical(range(10))


@program
def model(n):
    xs = []
    for _ in range(n):
        xs.append(sample(DIGIT))
    flag = sample("flag", Bernoulli(0.3))
    observe(Bernoulli(0.8), flag)
    factor(-1.0)
    return xs, flag


def test_doctests():
    result = doctest.testmod(ppl.handlers, extraglobs={"math": math})
    assert result.attempted >= 6 and result.failed == 0


def test_seed_reproduces_and_matches_the_first_particle():
    runs = [seed(model, 4)(3) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    assert {str(seed(model, s)(3)) for s in range(20)} != {str(runs[0])}
    assert ppl.importance(model, 3, particles=1, seed=4).values[0] == runs[0]
    with seed(4):
        assert model(3) == runs[0]


def test_trace_records_choices_and_likelihood():
    tr = trace(seed(model, 0)).get_trace(2)
    assert len(tr) == 3 and tr.addresses()[-1] == "flag"
    flag = tr["flag"].value
    assert tr.log_likelihood == pytest.approx(math.log(0.8 if flag else 0.2) - 1.0)
    assert tr.log_prior == pytest.approx(2 * math.log(0.1) + math.log(0.3 if flag else 0.7))


def test_condition_forms():
    with condition({"flag": True}):
        assert model(1)[1] is True
    conditioned = condition(model, {"flag": False})
    assert isinstance(conditioned, ppl.Program) and conditioned(1)[1] is False
    assert ppl.condition(model, {"flag": True})(0)[1] is True  # the exported name dispatches

    def plain():
        return sample("flag", Bernoulli(0.3))

    tr = trace(condition(plain, {"flag": True})).get_trace()
    assert len(tr) == 0 and tr.log_likelihood == pytest.approx(math.log(0.3))
    with pytest.raises(TypeError, match="dict"):
        condition(model, ["flag"])


def test_replay_reuses_values_and_rescoring():
    old = trace(seed(model, 1)).get_trace(2)
    new = trace(seed(replay(model, old), 99)).get_trace(2)
    assert new.values() == old.values()
    assert new.score == pytest.approx(old.score)


def test_block_hides_from_outer_handlers_only():
    outer = trace(block(trace(model), hide=["flag"]))
    outer(1)
    assert "flag" not in outer.trace.addresses() and len(outer.trace) == 1
    exposed = trace(block(model, expose=["flag"])).get_trace(1)
    assert exposed.addresses() == ["flag"]
    assert len(trace(block(model)).get_trace(1)) == 0


def test_scale_multiplies_every_log_density():
    base = trace(seed(model, 2)).get_trace(1)
    scaled = trace(seed(scale(model, 2.5), 2)).get_trace(1)
    assert scaled.log_prior == pytest.approx(2.5 * base.log_prior)
    assert scaled.log_likelihood == pytest.approx(2.5 * base.log_likelihood)
    with pytest.raises(ValueError, match="factor > 0"):
        scale(model, 0.0)


def test_handler_without_function_says_how_to_use_it():
    with pytest.raises(TypeError, match="with trace"):
        trace()()


def test_stack_is_clean_after_an_exception():
    from ppl.runtime import _SCOPE, _STACK

    @program
    def fails():
        sample(DIGIT)
        raise KeyError("boom")

    with pytest.raises(KeyError):
        trace(seed(fails, 0))()
    assert _STACK.get() == () and _SCOPE.get() is None


VOCAB = ["<s>", "a", "b", "c", "<eos>"]
# next-token probabilities given the last token: every prefix leaves several tokens possible
NEXT = {0: [0, 0.5, 0.3, 0.15, 0.05], 1: [0, 0.3, 0.3, 0.2, 0.2], 2: [0, 0.4, 0.1, 0.3, 0.2]}
toy = FunctionLM(VOCAB, lambda prefix: NEXT.get(prefix[-1], [0, 0.2, 0.4, 0.1, 0.3]), eos="<eos>")


@program
def chatter(n):
    ctx = toy.context("<s>")
    coins = []
    for _ in range(n):
        if sample(Bernoulli(0.5)):  # a value from the NumPy generator between the tokens
            tok = sample(ctx.next_token())
        else:  # a restricted token (ConstrainedNextToken): never "b" after "a"
            tok = sample(ctx.next_token(where=lambda text: not text.endswith("ab")))
        ctx = ctx + tok
        coins.append(sample(DIGIT))
        if tok.is_eos:
            break
    return ctx.text, coins


def test_seed_draws_tokens_as_the_one_particle_of_importance():
    texts = set()
    for s in range(12):
        tr = trace(seed(chatter, s)).get_trace(6)
        post = ppl.importance(chatter, 6, particles=1, seed=s)
        particle = post.traces[0]
        assert [(c.address, c.value, c.log_prob) for c in particle] == [
            (c.address, c.value, c.log_prob) for c in tr
        ]
        assert post.values[0] == seed(chatter, s)(6)
        texts.add(post.values[0][0])
    assert len(texts) >= 6  # the runs differ from seed to seed: the tokens are drawn
