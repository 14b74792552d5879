"""smc_steer and MH started from SMC on the embedded model: a short constrained task."""

from __future__ import annotations

import math

import pytest

import ppl
from ppl import condition, program, sample

pytestmark = pytest.mark.slow

TOKENS = 4


def short(text: str) -> bool:
    return all(sum(ch.isalpha() for ch in word) <= 5 for word in text.split())


@program
def short_words(lm, prompt: str, tokens: int):
    ctx = lm.context(prompt)
    for _ in range(tokens):
        tok = sample(ctx.next_token())
        condition(not tok.is_eos)
        ctx = ctx + tok
        condition(short(ctx.text))
    return ctx.text


def test_steer_and_mh_meet_the_constraint_without_re_encoding(embedded_lm):
    lm = embedded_lm
    prompt = lm.chat("Tell me a story.")
    prompt_len = len(lm.encode(prompt))
    n = 4

    steer = ppl.smc_steer(short_words, lm, prompt, TOKENS, particles=n, children=2, seed=0)
    assert math.isfinite(steer.log_evidence) and steer.log_evidence <= 0
    assert all(short(v) for v, w in zip(steer.values, steer.weights) if w > 0)
    assert steer.stats["forward_calls"] == TOKENS  # one batched call per token, children shared
    # the prompt once, then one token per kept particle per step: re-encoding the prompt for
    # every particle would feed n * prompt_len at least
    assert steer.stats["tokens_fed"] <= prompt_len + n * TOKENS < n * prompt_len

    steps = 3
    mh = ppl.mh(short_words, lm, prompt, TOKENS, chains=n, steps=steps, init="smc", seed=0)
    assert mh.log_evidence is None and len(mh.values) == n * steps
    assert all(short(v) for v in mh.values)
    assert 0 < mh.stats["init_forward_calls"] <= TOKENS
    # the init sweep and every move take at most one call per token, and a regeneration feeds
    # only the tokens it draws (each chain at most TOKENS a move), never the prompt again
    assert mh.stats["forward_calls"] <= TOKENS * (steps + 1)
    assert mh.stats["tokens_fed"] <= prompt_len + n * TOKENS * (steps + 1) < 2 * n * prompt_len
