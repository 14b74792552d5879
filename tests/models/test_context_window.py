"""The context window: a prompt or a context longer than `lm.max_length` raises before it is fed,
and `ppl.generate` checks its `max_tokens` up front."""

from __future__ import annotations

import pytest

import ppl
from ppl.models import ContextWindowError, FunctionLM


def never_ends(prefix):
    return {"a": 0.5, "b": 0.5}  # EOS has probability zero: generation runs until stopped


def windowed(max_length: int | None = 8) -> FunctionLM:
    return FunctionLM(["a", "b", "<eos>"], never_ends, eos="<eos>", max_length=max_length)


def test_max_length_is_none_when_unknown():
    lm = windowed(None)
    assert lm.max_length is None
    assert len(lm.context("a" * 1000).prompt_tokens) == 1000  # no limit to check


def test_a_prompt_longer_than_the_window_raises_before_any_forward_pass():
    lm = windowed(8)
    assert lm.max_length == 8
    lm.context("a" * 8).logprobs()  # exactly the window: fine
    lm.reset_counters()
    with pytest.raises(ContextWindowError) as info:
        lm.context("a" * 9)
    assert str(info.value).startswith(
        "prompt of 9 tokens is longer than the model's context window of 8 tokens (max_length)"
    )
    assert isinstance(info.value, ValueError)
    assert lm.forward_calls == 0


def test_a_context_extended_past_the_window_raises_at_the_forward_pass_that_would_exceed_it():
    lm = windowed(8)
    ctx = lm.context("aaa") + "bbbbb"  # 8 tokens: fits
    ctx.logprobs()
    longer = ctx + "a"
    with pytest.raises(ContextWindowError) as info:
        longer.logprobs()
    message = str(info.value)
    assert "context of 9 tokens (3 of prompt, 6 added after it)" in message
    assert "context window of 8 tokens" in message
    assert "stop generating earlier" in message
    assert lm.forward_calls == 1  # only the context that fits was fed


@ppl.program
def run_on(lm, prompt, n):
    ctx = lm.context(prompt)
    for _ in range(n):
        ctx = ctx + ppl.sample(ctx.next_token())
    return ctx.text


def test_inference_that_runs_past_the_window_raises_and_feeds_nothing_past_it():
    lm = windowed(5)
    with pytest.raises(ContextWindowError, match=r"context of 6 tokens \(2 of prompt, 4 added"):
        ppl.smc(run_on, lm, "ab", 10, particles=4, seed=0)
    assert lm.forward_calls == 4  # contexts of 2, 3, 4 and 5 tokens; none of 6
    # within the window the same program runs
    post = ppl.smc(run_on, lm, "ab", 3, particles=4, seed=0)
    assert all(len(text) == 3 for text in post.values)


def test_the_check_can_be_turned_off():
    lm = windowed(4)
    lm.max_length = None
    assert len(lm.context("a" * 6).logprobs()) == 3


def test_generate_checks_max_tokens_up_front():
    lm = windowed(5)
    with pytest.raises(ContextWindowError) as info:
        ppl.smc(ppl.generate, lm.context("ab"), max_tokens=4, particles=2, seed=0)
    message = str(info.value)
    assert "a context of 2 tokens plus max_tokens=4 is 6 tokens" in message
    assert "context window of 5 tokens (max_length)" in message
    assert "pass max_tokens=3 or fewer, or max_tokens=None" in message
    assert lm.forward_calls == 0  # raised before any token was generated
    post = ppl.smc(
        ppl.generate, lm.context("ab"), max_tokens=3, keep_unfinished=True, particles=2, seed=0
    )
    assert [len(text) for text in post.values] == [3, 3]


def test_generate_until_the_window_is_full():
    lm = windowed(5)
    context = lm.context("a") + "b"  # 2 tokens: 3 more fill the window
    post = ppl.smc(
        ppl.generate, context, max_tokens=None, keep_unfinished=True, particles=2, seed=0
    )
    assert all(len(text) == 4 and text.startswith("b") for text in post.values)
    with pytest.raises(ValueError, match=r"lm.max_length is None"):
        ppl.smc(ppl.generate, windowed(None).context("a"), max_tokens=None, particles=2, seed=0)


def test_generate_returns_the_text_after_the_prompt():
    lm = windowed(None)
    text = ppl.smc(
        ppl.generate, lm.context("a") + "bb", max_tokens=2, keep_unfinished=True, particles=1
    ).values[0]
    assert text.startswith("bb") and len(text) == 4  # the context's own text, then 2 tokens
