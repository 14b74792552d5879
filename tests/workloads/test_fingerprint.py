"""A checkpoint answers only for the work that wrote it: each part of a run is known by content.

Each test writes a checkpoint, changes one thing, and checks that a rerun refuses the file and
says what changed; an unchanged rerun (also in another process) resumes.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ppl
from ppl.models import FunctionLM
from ppl.models.spec import ModelSpec
from ppl.workloads.checkpoint import input_hash
from ppl.workloads.fingerprint import Unidentifiable, content, digest, model_digest
from tests.workloads.toy import letters, with_lm

ROOT = Path(__file__).resolve().parents[2]

MODULE = """
import ppl
from ppl import program, sample, factor
from ppl.models import FunctionLM

lm = FunctionLM(["a", "b", "<eos>"], lambda prefix: [1.0, 2.0, 0.5], eos="<eos>")
BONUS = {bonus}


@program
def inner(ctx):
    tok = sample(ctx.next_token())
    factor(BONUS * (tok.text == "a"))
    return ctx + tok


@program
def outer(prompt):
    ctx = lm.context(prompt)
    for _ in range(3):
        ctx = inner(ctx)  # {comment}
    return ctx.text
"""


def load_module(tmp_path: Path, name: str, **fields) -> object:
    """Write the test module with `fields` and import it afresh (a new module object)."""
    values = {"bonus": 0.5, "comment": "a comment", **fields}
    path = tmp_path / f"{name}.py"
    path.write_text(
        MODULE.format(**values).replace(
            "    return ctx + tok", values.get("inner_return", "    return ctx + tok")
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))


def run(module, path, **options):
    settings = {"particles": 3, **options}
    return ppl.map(ppl.smc, module.outer, [("a",), ("b",)], checkpoint=path, **settings)


@pytest.fixture
def written(tmp_path):
    path = tmp_path / "run.jsonl"
    run(load_module(tmp_path, "fp_first"), path)
    return path


def test_an_unchanged_rerun_resumes_even_with_comments_and_layout_changed(tmp_path, written):
    again = run(load_module(tmp_path, "fp_first", comment="another comment, longer"), written)
    assert again.stats["resumed"] == 2 and again.ok


@pytest.mark.parametrize(
    "fields,changed",
    [
        ({"inner_return": "    return ctx + tok  # same code\n"}, None),
        ({"inner_return": "    ctx = ctx + tok\n    return ctx"}, "fp_first.inner"),
        ({"bonus": 0.75}, "fp_first.inner"),  # a global the called program reads
    ],
)
def test_an_edited_program_or_one_it_calls_is_detected(tmp_path, written, fields, changed):
    module = load_module(tmp_path, "fp_first", **fields)
    if changed is None:
        assert run(module, written).stats["resumed"] == 2
        return
    with pytest.raises(ValueError, match=rf"what changed: the program \({changed}:"):
        run(module, written)


def test_another_method_seed_or_option_is_named(tmp_path):
    path = tmp_path / "run.jsonl"
    ppl.map(ppl.smc, letters, [("ab",)], particles=2, checkpoint=path)
    with pytest.raises(ValueError, match=r"the method \(ppl.*smc then, .*importance now\)"):
        ppl.map(ppl.importance, letters, [("ab",)], particles=2, checkpoint=path)
    with pytest.raises(ValueError, match=r"option 'ess_threshold' \(not given then\)"):
        ppl.map(ppl.smc, letters, [("ab",)], particles=2, ess_threshold=0.2, checkpoint=path)
    with pytest.raises(ValueError, match=r"the seed \(0 then, \[0, 1\] now\)"):
        ppl.map(ppl.smc, letters, [("ab",)], particles=2, seed=(0, 1), checkpoint=path)


def test_every_option_of_a_model_spec_counts():
    base = ModelSpec("hf", "org/model")
    others = [
        ModelSpec("hf", "org/model", options={"revision": "v2"}),
        ModelSpec("hf", "org/model", options={"gguf_file": "model.Q8_0.gguf"}),
        ModelSpec("hf", "org/model", dtype="bfloat16"),
        ModelSpec("hf", "org/model", kv_block=32),
        ModelSpec("hf", "org/other"),
    ]
    digests = {model_digest(base)} | {model_digest(s) for s in others}
    assert len(digests) == 1 + len(others), "each option changes the model's fingerprint"
    # the hub token is a secret: it is not written, and it is not the model
    assert model_digest(ModelSpec("hf", "org/model", options={"token": "hf_x"})) == (
        model_digest(base)
    )


def test_a_model_without_a_spec_is_known_by_its_vocabulary_and_function():
    def weights(prefix):
        return [1.0, 2.0, 0.5]

    def other(prefix):
        return [2.0, 1.0, 0.5]

    a = FunctionLM(["a", "b", "<eos>"], weights, eos="<eos>")
    assert model_digest(a) == model_digest(FunctionLM(["a", "b", "<eos>"], weights, eos="<eos>"))
    assert model_digest(a) != model_digest(FunctionLM(["a", "c", "<eos>"], weights, eos="<eos>"))
    assert model_digest(a) != model_digest(FunctionLM(["a", "b", "<eos>"], other, eos="<eos>"))


def test_a_model_given_to_map_by_spec_is_part_of_the_work(tmp_path):
    lm_a = FunctionLM(["a", "b", "<eos>"], lambda p: [1.0, 1.0, 0.5], eos="<eos>")
    lm_b = FunctionLM(["a", "c", "<eos>"], lambda p: [1.0, 1.0, 0.5], eos="<eos>")
    path = tmp_path / "run.jsonl"
    ppl.map(ppl.smc, with_lm, [("a",)], model=lm_a, particles=2, checkpoint=path)
    with pytest.raises(ValueError, match=r"what changed: the model"):
        ppl.map(ppl.smc, with_lm, [("a",)], model=lm_b, particles=2, checkpoint=path)


def test_inputs_are_known_by_content_not_repr():
    big = np.zeros(5000)
    changed = big.copy()
    changed[2500] = 1.0  # numpy's repr of both is the same summary
    assert repr(big) == repr(changed)
    assert input_hash((big,), {}) != input_hash((changed,), {})
    assert input_hash((big.astype(np.float32),), {}) != input_hash((big,), {})  # dtype
    assert input_hash((big.reshape(50, 100),), {}) != input_hash((big,), {})  # shape
    assert input_hash((big,), {}) == input_hash((big.copy(),), {})
    # keyword order does not change a call; list order does
    assert input_hash((), {"a": 1, "b": 2}) == input_hash((), {"b": 2, "a": 1})
    assert input_hash(([1, 2],), {}) != input_hash(([2, 1],), {})
    assert input_hash((1,), {}) != input_hash((1.0,), {}) != input_hash((True,), {})


def test_torch_tensors_are_known_by_dtype_shape_and_bytes():
    torch = pytest.importorskip("torch")
    t = torch.zeros(3000)
    u = t.clone()
    u[1500] = 1
    assert input_hash((t,), {}) != input_hash((u,), {})
    assert input_hash((t.to(torch.bfloat16),), {}) != input_hash((t,), {})
    assert input_hash((t,), {}) == input_hash((t.clone(),), {})


class Box:
    """An object whose repr shows its address: known by its fields."""

    def __init__(self, x):
        self.x = x


def test_objects_are_known_by_their_fields_and_an_unreadable_one_is_refused():
    assert "at 0x" in repr(Box(1))
    assert input_hash((Box(1),), {}) == input_hash((Box(1),), {})
    assert input_hash((Box(1),), {}) != input_hash((Box(2),), {})
    import threading

    with pytest.raises(Unidentifiable, match=r"input 4, argument 'lock' is a .*lock"):
        input_hash((), {"lock": threading.Lock()}, 4)
    assert content(threading.Lock(), strict=False)  # counted by type where not strict


def test_a_container_that_holds_itself_is_hashed():
    a: list = [1]
    a.append(a)
    assert digest(content(a))


RESUME = """
import sys
sys.path.insert(0, {root!r})
import ppl
from tests.workloads.toy import letters
out = ppl.map(ppl.smc, letters, [("ab",), ("ba",), ("bb",)], particles=3, checkpoint={path!r})
print(out.stats["resumed"])
"""


def test_a_rerun_in_another_process_resumes(tmp_path):
    path = tmp_path / "run.jsonl"
    ppl.map(ppl.smc, letters, [("ab",), ("ba",), ("bb",)], particles=3, checkpoint=path)
    script = RESUME.format(root=str(ROOT), path=str(path))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={"PYTHONHASHSEED": "123", **__import__("os").environ},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "3"


def test_an_old_format_checkpoint_is_refused_with_why(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text('{"format": "ppl.map/1", "index": 0, "status": "ok"}\n')
    with pytest.raises(ValueError, match="earlier ppl .format ppl.map/1."):
        ppl.map(ppl.smc, letters, [("ab",)], particles=2, checkpoint=path)
