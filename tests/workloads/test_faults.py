"""Faults injected on purpose: for each, what the user sees, and that nothing finished is lost.

Elsewhere: a run SIGKILLed while it writes its checkpoint, and a line cut off by the kill
(`test_checkpoint.py`); a Ray worker lost for good, and all of them lost (`test_ray.py`).
"""

from __future__ import annotations

import errno
import json

import pytest

import ppl
from ppl.models import FunctionLM
from ppl.workloads.batch import SharedPassOutOfMemory
from tests.workloads.toy import VOCAB, next_token, same_run, with_lm

INPUTS = [(p,) for p in ["a", "ab", "ba", "abc", "c", "cab", "bb", "b"]]


class FaultyLM(FunctionLM):
    """The toy model, with a fault that can be armed: `fail(rows, calls)` says when a forward
    pass raises, and what."""

    def __init__(self, fail):
        super().__init__(VOCAB, next_token, eos="<eos>")
        self.fail = fail
        self.armed = True
        self.raised = 0
        self.calls = 0

    def _extend(self, parents, new_tokens):
        self.calls += 1
        if self.armed:
            error = self.fail(parents, new_tokens, self.calls)
            if error is not None:
                self.raised += 1
                raise error
        return super()._extend(parents, new_tokens)


def never(*args):
    """No fault."""
    return None


def run(lm, inputs=INPUTS, **options):
    settings = {"particles": 3, "in_flight": 4, **options}
    return ppl.map(ppl.smc, with_lm, inputs, model=lm, **settings)


def test_a_model_that_raises_once_mid_batch_loses_no_count():
    def once(parents, new_tokens, call):
        if call == 3 and len(parents) > 1:
            return RuntimeError("a transient fault in the forward pass")
        return None

    lm = FaultyLM(once)
    out = run(lm)
    assert lm.raised == 1 and out.ok
    # each run saw what it would see alone: the same results as an undisturbed run
    calm = FaultyLM(never)
    for i, (a, b) in enumerate(zip(run(calm), out)):
        assert same_run(a, b), f"item {i} differs"
    # the failed pass counts, as the model counted it; the runs' counts add up to the model's
    assert out.stats["forward_calls"] == lm.forward_calls
    assert out.stats["tokens_fed"] == lm.tokens_fed
    assert sum(p.stats["tokens_fed"] for p in out) == lm.tokens_fed
    assert lm.tokens_fed > calm.tokens_fed  # the rows of the failed pass were fed again


def test_a_model_that_always_fails_on_one_input_fails_that_item_only():
    def on_c(parents, new_tokens, call):  # the input "c" is fed in its prompt's row
        if any(tokens[:1] == [VOCAB.index("c")] and not parent
               for parent, tokens in zip(parents, new_tokens)):  # fmt: skip
            return ValueError("this row cannot be fed")
        return None

    lm = FaultyLM(on_c)
    with pytest.warns(ppl.InferenceWarning, match="items raised"):
        out = run(lm)
    failed = {e.index for e in out.failures}
    assert failed == {i for i, (p,) in enumerate(INPUTS) if p.startswith("c")}
    assert all("this row cannot be fed" in out[i].error for i in failed)
    calm = run(FaultyLM(never))
    for i in set(range(len(INPUTS))) - failed:
        assert same_run(out[i], calm[i]), f"item {i} differs"
    assert out.stats["tokens_fed"] == lm.tokens_fed
    assert out.stats["forward_calls"] == lm.forward_calls


def test_out_of_memory_stops_the_run_once_with_the_rows_that_would_fit(tmp_path):
    def late(parents, new_tokens, call):  # memory runs out part way through the run
        if call > 12 and len(parents) > 1:
            return RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return None

    path = tmp_path / "run.jsonl"
    lm = FaultyLM(late)
    inputs = INPUTS * 2
    with pytest.raises(SharedPassOutOfMemory) as caught:
        run(lm, inputs, particles=3, in_flight=3, rows=None, checkpoint=path)
    assert lm.raised == 1, "not retried request by request"
    message = str(caught.value)
    assert "out of memory in a forward pass of" in message and "CUDA out of memory" in message
    assert f"rows={caught.value.suggested_rows})" in message
    assert caught.value.suggested_rows == max(1, caught.value.rows // 2)
    # what finished is in the checkpoint; with the rows it names, a rerun finishes the rest
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert kept and len({r["index"] for r in kept}) == len(kept)
    lm.armed = False
    resumed = run(lm, inputs, particles=3, in_flight=3, rows=None, checkpoint=path)
    assert resumed.ok and resumed.stats["resumed"] == len(kept)
    whole = run(FaultyLM(never), inputs, particles=3, in_flight=3, rows=None)
    for i, (a, b) in enumerate(zip(whole, resumed)):
        assert same_run(a, b), f"item {i} differs"


def test_with_rows_set_an_out_of_memory_names_half_of_them():
    def big(parents, new_tokens, call):
        return RuntimeError("CUDA out of memory.") if len(parents) > 4 else None

    with pytest.raises(SharedPassOutOfMemory, match=r"of (7|8) rows .*\(rows=8\).*rows=[34]\)"):
        run(FaultyLM(big), rows=8)
    assert run(FaultyLM(big), rows=4).ok


def test_a_full_disk_says_so_and_the_checkpoint_stays_readable(tmp_path, monkeypatch):
    from ppl.workloads import checkpoint

    path = tmp_path / "run.jsonl"
    real = checkpoint._write_all
    writes = []

    def filling_up(fd, data):  # the third line finds the disk full half way through
        writes.append(len(data))
        if len(writes) == 3:
            real(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(checkpoint, "_write_all", filling_up)
    lm = FaultyLM(never)
    with pytest.raises(OSError, match=r"cannot write item \d+: No space left on device \(ENOSPC\)"
                       r"; the file keeps the 2 items written before it") as caught:  # fmt: skip
        run(lm, checkpoint=path, in_flight=1)
    assert caught.value.errno == errno.ENOSPC
    # the half line was cut off: the file holds two whole lines, and a rerun resumes from them
    assert path.read_bytes().endswith(b"\n") and path.read_bytes().count(b"\n") == 2
    monkeypatch.undo()
    resumed = run(lm, checkpoint=path, in_flight=1)
    assert resumed.ok and resumed.stats["resumed"] == 2
    whole = run(FaultyLM(never), in_flight=1)
    for i, (a, b) in enumerate(zip(whole, resumed)):
        assert same_run(a, b), f"item {i} differs"


def written(tmp_path):
    path = tmp_path / "run.jsonl"
    run(FaultyLM(never), INPUTS[:3], checkpoint=path)
    return path, path.read_text().splitlines()


def test_a_hand_edited_line_is_refused_and_deleting_it_reruns_its_item(tmp_path):
    path, lines = written(tmp_path)
    record = json.loads(lines[1])
    record["posterior"]["values"][0] = "the answer I wanted"  # typed in by hand
    lines[1] = json.dumps(record, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 2: the line was changed after ppl wrote it"):
        run(FaultyLM(never), INPUTS[:3], checkpoint=path)
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # as the message advises
    again = run(FaultyLM(never), INPUTS[:3], checkpoint=path)
    assert again.ok and again.stats["resumed"] == 2


def test_a_damaged_line_in_the_middle_is_named(tmp_path):
    path, lines = written(tmp_path)
    lines[1] = lines[1][: len(lines[1]) // 2]  # a line cut short, then more lines after it
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 2: not a JSON line.*Delete that line"):
        run(FaultyLM(never), INPUTS[:3], checkpoint=path)
