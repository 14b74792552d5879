"""A deterministic toy model and programs for the workload tests (also run in subprocesses)."""

from __future__ import annotations

import os
import threading
import time

import ppl
from ppl import condition, factor, program, sample
from ppl.models import FunctionLM

VOCAB = ["a", "b", "c", "<eos>"]
DELAY = [0.0]  # seconds per row, to slow runs down in the kill test


def next_token(prefix: tuple[int, ...]) -> list[float]:
    if DELAY[0]:
        time.sleep(DELAY[0])
    k = len(prefix)
    return [1.0 + k % 3, 2.0, 1.0 + sum(prefix) % 2, 0.6]


lm = FunctionLM(VOCAB, next_token, eos="<eos>")


@program
def letters(prompt: str, n: int = 6):
    """Up to `n` letters after `prompt`; never "cc", and each "a" is favoured."""
    ctx = lm.context(prompt)
    for _ in range(n):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        condition("cc" not in ctx.text)
        factor(0.5 * ctx.text.count("a"))
        if tok.is_eos:
            break
    if prompt == "cbc":
        raise ValueError("this input always fails")
    return ctx.text


@program
def with_lm(lm, prompt: str, n: int = 4):
    """The same kind of program, taking its model as the argument `lm`."""
    ctx = lm.context(prompt)
    for _ in range(n):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        if tok.is_eos:
            break
    return ctx.text


PROMPTS = ["a", "ab", "ba", "abc", "c", "cab", "bb", "a", "cc", "bca", "b", "aa"]
INPUTS = [(p,) for p in PROMPTS]


def same_run(a: ppl.Posterior, b: ppl.Posterior) -> bool:
    """The same values, weights and evidence, bit for bit."""
    return (
        a.values == b.values
        and a.log_weights.tolist() == b.log_weights.tolist()
        and (
            a.log_evidence == b.log_evidence or (a.log_evidence is None) == (b.log_evidence is None)
        )
        and list(a.ess) == list(b.ess)
    )


def slow_next_token(prefix: tuple[int, ...]) -> list[float]:
    time.sleep(0.01)
    return next_token(prefix)


slow_lm = FunctionLM(VOCAB, slow_next_token, eos="<eos>")


@program
def slow_letters(prompt: str):
    """`with_lm` on a model that takes 10 ms a row: slow enough to kill a worker mid-run."""
    text = with_lm(slow_lm, prompt, 6)
    return text


@program
def locked(prompt: str):
    """`with_lm`, returning a lock (which cannot be pickled) for the input "b"."""
    text = with_lm(lm, prompt, 3)
    if prompt == "b":
        return threading.Lock()
    return text


@program
def exits(prompt: str):
    """`slow_letters`, ending its process for the input "c" (as a crash in native code would)."""
    text = with_lm(slow_lm, prompt, 6)
    if prompt == "c":
        os._exit(3)
    return text


class Abort(BaseException):
    """Not an Exception: it escapes an item's run, and a Ray worker's whole chunk with it."""


@program
def aborts(prompt: str):
    """`with_lm`, raising `Abort` for the input "b"."""
    text = with_lm(lm, prompt, 3)
    if prompt == "b":
        raise Abort("the run of 'b' stops here")
    return text
