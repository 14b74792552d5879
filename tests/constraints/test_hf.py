"""The transformers LogitsProcessor built from a constraint: masked decoding, row by row."""

import math

import pytest
import torch

import ppl
from ppl.constraints.hf import ConstraintLogitsProcessor
from tests.constraints.toy import PARENS, VOCAB, toy_lm


def test_processor_masks_each_row_by_its_own_text():
    proc = ConstraintLogitsProcessor(PARENS, toy_lm)
    tid = {t: i for i, t in enumerate(VOCAB)}
    prompt = torch.tensor([[tid["<s>"]], [tid["<s>"]]])
    scores = proc(prompt, torch.zeros(2, len(VOCAB)))
    allowed = [{VOCAB[i] for i in range(len(VOCAB)) if scores[r, i] > -math.inf} for r in (0, 1)]
    assert allowed[0] == allowed[1] == {"a", "b", "(", "ab"}
    ids = torch.cat([prompt, torch.tensor([[tid["("]], [tid["a"]]])], 1)
    scores = proc(ids, torch.zeros(2, len(VOCAB)))
    row0 = {VOCAB[i] for i in range(len(VOCAB)) if scores[0, i] > -math.inf}
    row1 = {VOCAB[i] for i in range(len(VOCAB)) if scores[1, i] > -math.inf}
    assert row0 == {"a", "b", "(", "ab"} and row1 == {"a", "b", "ab", "<eos>"}


@pytest.mark.slow
def test_generate_with_the_processor_on_the_embedded_model(embedded_lm):
    lm = embedded_lm
    number = ppl.Regex("[0-9]{1,3}(\\.[0-9])?")
    proc = ppl.constraints.logits_processor(number, lm)
    ids = torch.tensor([lm.encode(lm.chat("Pick a number."))])
    out = lm.model.generate(
        ids, logits_processor=[proc], max_new_tokens=8, do_sample=True, pad_token_id=0
    )
    new = out[0, ids.shape[1] :].tolist()
    eos = set(lm.eos_token_ids)
    text = b"".join(lm.token_bytes[i] for i in new if i not in eos).decode()
    assert number.matches(text), text
