"""Contexts and tokens on small function-built models: values, text decoding, feeding counts."""

from __future__ import annotations

import math

import pytest
import torch

import ppl
from ppl.models import FunctionLM
from tests.lines import line_of

# a byte-level vocabulary in which "é" (c3 a9) and "😀" (f0 9f 98 80) are split across tokens
BYTE_VOCAB = [b"<s>", b"a", b" ", b"\xc3", b"\xa9", b"\xf0\x9f", b"\x98", b"\x80", b"<eos>"]


def uniform(prefix):
    return [0.0] + [1.0] * (len(BYTE_VOCAB) - 1)


def byte_lm() -> FunctionLM:
    return FunctionLM(BYTE_VOCAB, uniform, eos=b"<eos>".decode(), bos="<s>")


def ids(lm, *tokens: bytes) -> list[int]:
    return [lm.token_bytes.index(t) for t in tokens]


def test_multibyte_characters_split_across_tokens_decode_whole():
    lm = byte_lm()
    ctx = lm.context("a")
    texts = []
    for tid in ids(lm, b"a", b"\xc3", b"\xa9", b" ", b"\xf0\x9f", b"\x98", b"\x80", b"a"):
        ctx = ctx + tid
        texts.append(ctx.text)
    # an incomplete character is held back until its last byte arrives, never shown as U+FFFD
    assert texts == ["a", "a", "aé", "aé ", "aé ", "aé ", "aé 😀", "aé 😀a"]
    assert ctx.bytes == "aé 😀a".encode()
    assert len(ctx) == 8 and ctx.prompt == "a"


def test_invalid_bytes_are_replaced_not_raised():
    lm = byte_lm()
    ctx = lm.context("a") + ids(lm, b"\xa9")[0] + ids(lm, b"a")[0]  # a stray continuation byte
    assert ctx.text == "\ufffda"


def test_contexts_are_immutable_values():
    lm = byte_lm()
    root = lm.context("a")
    assert lm.context("a") is root  # one root per prompt: the prompt is fed once per run
    a, b = root + "a", root + " "
    assert root.tokens == [] and a.tokens == ids(lm, b"a") and b.tokens == ids(lm, b" ")
    assert a == root + "a" and hash(a) == hash(root + "a") and a != b
    assert (root + "a" + " ").tokens == (root + "a ").tokens
    with pytest.raises(AttributeError):
        root.foo = 1
    with pytest.raises(TypeError, match="Token, a token id or a str"):
        root + 1.5


def test_tokens_are_shared_values():
    lm = byte_lm()
    tok = lm.token(1)
    assert tok is lm.token(1) and tok.id == 1 and tok.text == "a" and not tok.is_eos
    assert lm.token(len(BYTE_VOCAB) - 1).is_eos
    assert lm.token(len(BYTE_VOCAB) - 1).text == "<eos>"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lm.token(len(BYTE_VOCAB))


def test_eos_adds_no_text():
    lm = byte_lm()
    ctx = lm.context("a") + "a" + lm.token(len(BYTE_VOCAB) - 1)
    assert ctx.text == "a"


def test_next_token_distribution():
    lm = FunctionLM(
        ["<s>", "x", "y", "<eos>"], lambda p: [0, 0.2, 0.3, 0.5], eos="<eos>", bos="<s>"
    )
    nxt = lm.context("x").next_token()
    assert nxt.log_prob(lm.token(2)) == pytest.approx(math.log(0.3))
    assert nxt.log_prob(1) == pytest.approx(math.log(0.2))
    assert nxt.log_prob(0) == -math.inf


def test_each_token_is_fed_once_and_identical_contexts_share_a_row():
    seen = []

    def fn(prefix):
        seen.append(prefix)
        return [0.0, 1.0, 1.0, 1.0]

    lm = FunctionLM(["<s>", "x", "y", "<eos>"], fn, eos="<eos>", bos="<s>")
    root = lm.context("xy")
    lm.compute_logprobs([root])
    assert lm.tokens_fed == 3 and lm.forward_calls == 1  # <s> x y
    # two particles that drew the same token hold different but equal contexts: fed once
    kids = [root + "x", root + "x", root + "y", root + "y"]
    lm.compute_logprobs(kids + kids)
    assert lm.tokens_fed == 5 and lm.forward_calls == 2
    assert kids[0].logprobs() is kids[1].logprobs()
    assert seen == [(0, 1, 2), (0, 1, 2, 1), (0, 1, 2, 2)]
    lm.compute_logprobs(kids)  # already known: free
    assert lm.forward_calls == 2


def test_function_lm_outputs_and_errors():
    vocab = ["<s>", "x", "<eos>"]
    by_map = FunctionLM(vocab, lambda p: {"x": 3.0, "<eos>": 1.0}, eos="<eos>", bos="<s>")
    assert by_map.context("x").logprobs().exp().tolist() == pytest.approx([0, 0.75, 0.25])
    by_logits = FunctionLM(vocab, lambda p: torch.tensor([0.0, 1.0, 1.0]), logits=True, eos=2)
    e = math.e
    expected = [1 / (1 + 2 * e), e / (1 + 2 * e), e / (1 + 2 * e)]
    assert by_logits.context("x").logprobs().exp().tolist() == pytest.approx(expected, abs=1e-6)
    bad = FunctionLM(vocab, lambda p: [0.0, math.nan, 1.0], eos="<eos>")
    with pytest.raises(ValueError, match="non-negative weights"):
        bad.context("x").logprobs()
    short = FunctionLM(vocab, lambda p: [1.0], eos="<eos>")
    with pytest.raises(ValueError, match="returned 1 values for a vocabulary of 3"):
        short.context("x").logprobs()
    with pytest.raises(ValueError, match="repeated"):
        FunctionLM(["x", "x"], uniform)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        FunctionLM(vocab, uniform, eos="</s>")
    with pytest.raises(ValueError, match="cannot encode"):
        by_map.context("z")
    with pytest.raises(TypeError, match="str"):
        by_map.context(42)


def test_empty_context_without_bos_is_a_clear_error():
    lm = FunctionLM(["x", "<eos>"], lambda p: [0.5, 0.5], eos="<eos>")
    with pytest.raises(ValueError, match="empty context"):
        lm.context("").logprobs()


def test_contexts_of_different_models_are_not_mixed():
    a, b = byte_lm(), byte_lm()
    with pytest.raises(ValueError, match="another language model"):
        a.compute_logprobs([b.context("a")])


def test_context_inside_a_program_under_smc_counts_tokens():
    fed = []

    def fn(prefix):
        fed.append(prefix)
        return uniform(prefix)

    lm = FunctionLM(BYTE_VOCAB, fn, eos="<eos>", bos="<s>")

    @ppl.program
    def gen():
        ctx = lm.context("a a")
        for _ in range(5):
            ctx = ctx + ppl.sample(ctx.next_token())
        return ctx.text

    post = ppl.smc(gen, particles=8, seed=3)
    # the model saw each sequence once: the prompt (<s> a ' ' a: 4 tokens) once, then each
    # distinct generated prefix whose distribution was needed once, by its last token
    assert len(fed) == len(set(fed)) and fed[0] == (0, 1, 2, 1)
    assert post.stats["tokens_fed"] == 4 + (len(fed) - 1)
    assert post.stats["forward_calls"] == 5
    assert all(isinstance(v, str) for v in post.values)


# ---------------------------------------------------------------------------------------------
# What a token value is: observe(ctx.next_token(), value) with anything else names the user's line

SMALL_LM = byte_lm()
OTHER_LM = FunctionLM(
    [b"<s>", b"x", b"<eos>"], lambda prefix: [0.0, 1.0, 1.0], eos="<eos>", bos="<s>"
)


def _line(marker: str) -> str:
    """`file:line` of the line of this file that ends with the comment `marker`."""
    return line_of(__file__, marker)


@ppl.program
def observes_text():
    ctx = SMALL_LM.context("a")
    ppl.observe(ctx.next_token(), "a")  # token-text


@ppl.program
def observes_unknown_id():
    ctx = SMALL_LM.context("a")
    ppl.observe(ctx.next_token(), 99)  # token-id


@ppl.program
def observes_other_models_token():
    ctx = SMALL_LM.context("a")
    ppl.observe(ctx.next_token(), OTHER_LM.token(1))  # token-other


@pytest.mark.parametrize(
    "prog, marker, says",
    [
        (
            observes_text,
            "token-text",
            "not text; to observe text use observe(ctx.continuation(), 'a')",
        ),
        (observes_unknown_id, "token-id", "99 is outside the vocabulary"),
        (observes_other_models_token, "token-other", "Token(1, 'x') is not a token of this model"),
    ],
)
@pytest.mark.parametrize("run", ["smc", "importance", "direct"])
def test_observing_what_is_not_a_token_names_the_line(prog, marker, says, run):
    # observe(ctx.next_token(), "a") was `ValueError: invalid literal for int()` from ppl
    with pytest.raises(TypeError) as info:
        if run == "direct":
            prog()
        else:
            getattr(ppl, run)(prog, particles=2, seed=0)
    message = str(info.value)
    assert _line(marker) in message
    assert "is not a value of NextToken(" in message and says in message
    assert f"a Token of this model ({SMALL_LM!r}) or its int id in 0..8" in message or (
        "Token(1, 'x')" in message
    )


@ppl.program
def observes_tokens(values):
    ctx = SMALL_LM.context("a")
    for v in values:
        ppl.observe(ctx.next_token(), v)


def test_a_token_value_is_a_token_or_its_id():
    import numpy as np

    tok = SMALL_LM.token(1)
    values = [tok, 1, np.int64(1), torch.tensor(1)]
    post = ppl.importance(observes_tokens, values, particles=1, seed=0)
    assert post.log_evidence == pytest.approx(4 * math.log(1 / 8), rel=1e-5)
    d = SMALL_LM.context("a").next_token()
    for bad in ("a", 99, -1, True, 1.0, OTHER_LM.token(1)):
        assert d.log_prob(bad) == -math.inf
        assert d.support_error(bad) is not None
