"""Token masks and grammar states: correct masks, EOS exactly when accepting, forks, rollback."""

import itertools
import math
import re

import numpy as np
import pytest
import torch

import ppl
from ppl import condition, program, sample
from ppl.constraints.masks import GrammarStates, model_masks
from ppl.distributions import Bernoulli
from ppl.models import FunctionLM
from tests.constraints.toy import PARENS, VOCAB, toy_lm

TOKENS = VOCAB[1:-1]  # the non-special tokens


def viable(s):
    """Is `s` a prefix of a string of PARENS?"""
    m = re.fullmatch(r"(\(*)([ab]*)(\)*)", s)
    if m is None:
        return False
    opened, body, closed = (len(g) for g in m.groups())
    return closed <= opened and (closed == 0 or body > 0)


def complete(s):
    m = re.fullmatch(r"(\(*)([ab]+)(\)*)", s)
    return m is not None and len(m.group(1)) == len(m.group(3))


def contexts(depth):
    for n in range(depth + 1):
        for toks in itertools.product(TOKENS, repeat=n):
            ctx = toy_lm.context("")
            for t in toks:
                ctx = ctx + VOCAB.index(t)
            yield "".join(toks), ctx


def test_masks_match_the_language_and_eos_exactly_when_accepting():
    states = PARENS.states(toy_lm)
    checked = 0
    for text, ctx in contexts(3):
        mask = states.model.masks([states.matcher(ctx)])[0].tolist()
        for tid, tok in enumerate(VOCAB):
            if tok == "<s>":
                expected = False
            elif tok == "<eos>":
                expected = complete(text)
            else:
                expected = viable(text + tok)
            expected = expected and viable(text)  # nothing follows a dead prefix
            assert mask[tid] == expected, (text, tok)
            assert ctx.next_token(PARENS).allows(tid) == expected
        checked += 1
    assert checked == 1 + 5 + 25 + 125


def test_states_are_values_of_contexts_whatever_the_order_and_cache():
    """Forked, revisited (rollback) and evicted contexts get the same states as fresh ones."""
    small = GrammarStates(model_masks(toy_lm), PARENS.grammar, capacity=3)
    fresh = GrammarStates(model_masks(toy_lm), PARENS.grammar)
    all_ctx = list(contexts(3))
    rng = np.random.default_rng(0)
    for k in rng.permutation(len(all_ctx)).tolist() + list(range(len(all_ctx))):
        _, ctx = all_ctx[k]
        got = small.model.masks([small.matcher(ctx)])
        want = fresh.model.masks([fresh.matcher(ctx)])
        assert torch.equal(got, want)
    assert len(small._entries) <= 3


def test_text_added_to_a_context_is_constrained_too():
    ctx = toy_lm.context("") + "(a"
    dist = ctx.next_token(PARENS)
    assert dist.allows(VOCAB.index(")")) and not dist.allows(VOCAB.index("<eos>"))
    assert dist.log_prob(VOCAB.index("<eos>")) == -math.inf
    assert dist.log_prob(VOCAB.index(")")) == pytest.approx(math.log(0.2))
    # the mass the mask keeps after "(a" (last token "a"): a, b, ")" and "ab"
    assert dist.log_mass() == pytest.approx(math.log(0.2 + 0.3 + 0.2 + 0.1))


def test_a_dead_end_gives_weight_zero_and_the_run_goes_on():
    @program
    def sometimes_broken():
        ctx = toy_lm.context("")
        if sample("broken", Bernoulli(0.5)):
            ctx = ctx + ")"  # no string of the language starts with ")"
        for _ in range(6):
            tok = sample(ctx.next_token(PARENS))
            ctx = ctx + tok
            if tok.is_eos:
                break
        condition(tok.is_eos)
        return ctx.text

    post = ppl.importance(sometimes_broken, particles=200, seed=3)
    alive = post.log_weights > -math.inf
    broken = np.array([t["broken"].value for t in post.traces], dtype=bool)
    assert alive.any() and not (alive & broken).any()
    assert all(PARENS.matches(v) for v, ok in zip(post.values, alive) if ok)


def test_generate_says_when_no_particle_finished_within_max_tokens():
    # "(" then "(" ... : one token is never a whole string of the language
    with pytest.warns(ppl.InferenceWarning, match="max_tokens reached without EOS"):
        post = ppl.smc(
            ppl.generate, toy_lm.context(""), constraint=PARENS, max_tokens=1, particles=8
        )
    assert post.log_evidence == -math.inf
    assert "max_tokens reached without EOS" in post.failure
    kept = ppl.smc(
        ppl.generate,
        toy_lm.context(""),
        constraint=PARENS,
        max_tokens=1,
        keep_unfinished=True,
        particles=8,
        seed=0,
    )
    assert math.isfinite(kept.log_evidence)
    assert all(re.fullmatch(r"\(|a|b|ab", v) for v in kept.values)


def test_a_model_without_eos_and_direct_runs():
    lm = FunctionLM(["x", "y"], lambda prefix: [0.5, 0.5])
    g = ppl.Regex("x+y")
    ctx = lm.context("x")  # the prompt is not constrained: only what follows it
    assert ctx.next_token(g).allows(0) and not ctx.next_token(g).allows(1)
    ctx = ctx + "xy"
    assert not ctx.next_token(g).allows(0) and not ctx.next_token(g).allows(1)
    rng = np.random.default_rng(0)
    ctx = lm.context("y")
    for _ in range(50):
        ctx = ctx + ctx.next_token(g).sample(rng)
        if g.matches(ctx.text):
            break
    assert re.fullmatch("x+y", ctx.text)
    with pytest.raises(ValueError, match="dead end"):  # nothing may follow, and there is no EOS
        ctx.next_token(g).sample(rng)


def test_observe_scores_disallowed_tokens_minus_infinity():
    @program
    def observed(tok):
        ctx = toy_lm.context("") + "("
        ppl.observe(ctx.next_token(PARENS), tok)
        return tok

    eos = toy_lm.token(VOCAB.index("<eos>"))
    with pytest.warns(ppl.InferenceWarning, match="zero weight"):
        post = ppl.importance(observed, eos, particles=2, seed=0)
    assert np.all(post.log_weights == -math.inf)
    lpar = toy_lm.token(VOCAB.index("a"))
    post = ppl.importance(observed, lpar, particles=2, seed=0)
    assert post.log_weights == pytest.approx([math.log(0.2)] * 2)
