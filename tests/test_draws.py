"""The batched token draws (`ppl.draws`): rows stacked without a copy, indices drawn in
proportion to their weights."""

from __future__ import annotations

import pytest
import torch

from ppl.draws import DRAW_BLOCK, draw_rows, stack_rows


def test_stack_rows_uses_the_batch_tensor_and_matches_torch_stack():
    batch = torch.randn(5, 7)
    rows = list(batch)
    assert stack_rows(rows) is batch  # all rows, in order: no copy
    for picked in ([rows[3], rows[1], rows[1]], [rows[4]], [rows[0], torch.randn(7)]):
        assert torch.equal(stack_rows(picked), torch.stack(picked))
    wider = list(torch.randn(4, 9)[:, :7])  # rows of a view whose base is wider
    assert torch.equal(stack_rows(wider), torch.stack(wider))
    loose = [torch.randn(7), torch.randn(7)]
    assert torch.equal(stack_rows(loose), torch.stack(loose))
    # a model's output is made in inference mode, where views keep no `_base`: still no copy
    with torch.inference_mode():
        made = torch.randn(5, 7)
    rows = list(made)
    assert rows[0]._base is None
    whole = stack_rows(rows)
    assert whole.data_ptr() == made.data_ptr() and torch.equal(whole, made)
    for picked in ([rows[3], rows[1], rows[1]], [rows[4]], rows[2:], [rows[0], torch.randn(7)]):
        assert torch.equal(stack_rows(picked), torch.stack(picked))
    assert stack_rows(rows[2:]).data_ptr() == rows[2].data_ptr()  # a run of rows: a view
    halves = list(torch.randn(3, 14).view(6, 7)[::2])  # rows 14 apart: gathered, not confused
    assert torch.equal(stack_rows(halves), torch.stack(halves))


# -- drawing token ids ---------------------------------------------------------------------------


@pytest.mark.statistical
@pytest.mark.parametrize("vocab", [5, 256, 700])  # one short block; whole blocks; and a tail
def test_draw_rows_follows_the_weights_and_never_draws_zero(vocab):
    """`draw_rows` draws each index in proportion to its weight, across block boundaries and
    in a partial last block, never an index of weight zero, and returns the rows' totals."""
    gen = torch.Generator().manual_seed(vocab)
    weights = torch.rand(vocab, generator=gen) ** 3
    weights[torch.rand(vocab, generator=gen) < 0.4] = 0.0  # zeros everywhere ...
    weights[DRAW_BLOCK - 1 : vocab : DRAW_BLOCK] = 0.0  # ... the last index of each block ...
    weights[-1] = 0.0  # ... and the row's last
    weights[vocab // 2] = 1.0  # ... and one heavy index
    draws = 200_000
    probs = weights.repeat(draws, 1)
    ids, totals = draw_rows(probs, torch.Generator().manual_seed(1))
    total = float(weights.double().sum())
    assert torch.allclose(totals, torch.full((draws,), total, dtype=torch.float64), rtol=1e-6)
    counts = torch.bincount(ids, minlength=vocab).double()
    assert counts[weights == 0].sum() == 0
    expected = draws * weights.double() / weights.double().sum()
    # each count is binomial: within 5 standard errors (a false alarm about once in 3 million
    # per index, so about once in 10,000 runs of all three cases)
    sd = (expected * (1 - expected / draws)).sqrt()
    assert ((counts - expected).abs() <= 5 * sd + 1e-9).all()


def test_draw_rows_on_rows_that_differ_and_rows_of_zeros():
    probs = torch.zeros(4, 600)
    probs[0, 3] = 2.0  # one index only
    probs[1, 599] = 1e-30  # a tiny weight in the tail block
    probs[2, 256] = 0.5  # the first index of the second block
    ids, totals = draw_rows(probs, torch.Generator().manual_seed(0))
    assert ids[:3].tolist() == [3, 599, 256]
    assert totals.tolist()[:3] == pytest.approx([2.0, 1e-30, 0.5])
    assert totals[3] == 0 and 0 <= ids[3] < 600  # all zero: arbitrary, and the total says so
