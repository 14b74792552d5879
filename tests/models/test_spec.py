"""Model specs: command-line forms, validation, value semantics, and models that pickle as specs.

The "hf" kind is built from a tiny random Llama saved to a temporary directory (no network);
the "embedded" kind from the session's embedded model (slow).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import json
import pickle
import subprocess
import sys

import pytest
import torch

import ppl.models
from ppl.models import KVOptions, ModelSpec, spec
from ppl.models.hf.model import HFModel
from ppl.models.hf.tiny import tiny_llama
from tests.models.test_hf import tiny_tokenizer

# -- command-line forms --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["embedded", "hf:HuggingFaceTB/SmolLM2-360M-Instruct", "hf:/models/my model"]
)
def test_parse_and_str_round_trip(text):
    parsed = ModelSpec.parse(text)
    assert str(parsed) == text
    assert ModelSpec.parse(str(parsed)) == parsed


def test_parse_kinds():
    assert ModelSpec.parse("embedded") == spec("embedded")
    assert ModelSpec.parse("  hf:org/name \n") == spec("hf", "org/name")
    assert ModelSpec.parse("hf:C:/models/x") == spec("hf", "C:/models/x")  # first colon splits
    assert ModelSpec.parse("hf:gpt2", dtype="bfloat16", device="cuda") == spec(
        "hf", "gpt2", dtype="bfloat16", device="cuda"
    )


@pytest.mark.parametrize("text", ["gpt2", "hf", "hf:", "hf:  ", "embedded:x", "vllm:x", ""])
def test_parse_rejects_other_forms_naming_the_accepted_ones(text):
    with pytest.raises(ValueError, match='"embedded" or "hf:NAME_OR_PATH"'):
        ModelSpec.parse(text)


def test_str_shows_dtype_and_device():
    assert str(spec("embedded", dtype="float32")) == "embedded (dtype=float32)"
    assert (
        str(spec("hf", "gpt2", dtype=torch.bfloat16, device="cuda:1", revision="main"))
        == "hf:gpt2 (dtype=bfloat16, device=cuda:1)"
    )


# -- validation ----------------------------------------------------------------------------------


def test_errors_say_what_is_accepted():
    with pytest.raises(ValueError, match="unknown model kind 'vllm': use one of 'embedded', 'hf'"):
        spec("vllm", "x")
    with pytest.raises(ValueError, match="needs a HuggingFace model id or a local directory"):
        spec("hf")
    with pytest.raises(ValueError, match='takes no name.*spec\\("hf", "gpt2"\\)'):
        spec("embedded", "gpt2")
    with pytest.raises(ValueError, match="takes only dtype, device and engine, not revision"):
        spec("embedded", revision="main")
    with pytest.raises(ValueError, match="unknown dtype 'float33'"):
        spec("hf", "gpt2", dtype="float33")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        spec("hf", "gpt2", device="gpu")
    with pytest.raises(TypeError, match="device_map=.*is not a plain value"):
        spec("hf", "gpt2", device_map={"": 0})
    with pytest.raises(ValueError, match="unknown model kind"):
        ModelSpec("vllm")  # direct construction is checked the same way


# -- value semantics -----------------------------------------------------------------------------


def test_torch_values_are_normalised_to_names():
    s = spec("hf", "gpt2", dtype=torch.float16, device=torch.device("cuda", 0))
    assert (s.dtype, s.device) == ("float16", "cuda:0")
    assert spec("hf", "gpt2", dtype="torch.float16") == spec("hf", "gpt2", dtype="float16")
    assert ModelSpec("embedded", dtype=torch.float32, device=torch.device("cpu")) == spec(
        "embedded", dtype="float32", device="cpu"
    )


def test_equal_specs_hash_alike_and_options_are_sorted():
    a = spec("hf", "gpt2", revision="main", local_files_only=True)
    b = spec("hf", "gpt2", local_files_only=True, revision="main")
    assert a.options == (("local_files_only", True), ("revision", "main"))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert ModelSpec("hf", "gpt2", options={"revision": "main", "local_files_only": True}) == a
    assert a != spec("hf", "gpt2", revision="main")
    assert spec("hf", "gpt2", dtype="float16") != spec("hf", "gpt2", dtype="bfloat16")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.dtype = "float16"


def test_spec_pickle_round_trip():
    s = spec("hf", "gpt2", dtype="bfloat16", device="cuda", revision="main", subfolder=("a", 1))
    back = pickle.loads(pickle.dumps(s))
    assert back == s and hash(back) == hash(s)
    assert copy.deepcopy(s) == s


def test_repr_hides_hub_tokens():
    s = spec("hf", "org/private", token="hf_secret")
    assert "hf_secret" not in repr(s) and "hf_secret" not in str(s)
    assert dict(s.options)["token"] == "hf_secret"  # still sent to the worker that loads it


def test_importing_specs_does_not_import_transformers():
    code = (
        "import sys\n"
        "from ppl.models import ModelSpec, spec\n"
        "import pickle\n"
        "pickle.loads(pickle.dumps(spec('hf', 'gpt2', dtype='bfloat16')))\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- building and pickling models (a tiny local model) -------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A directory holding a tiny random Llama and its tokenizer, as `from_pretrained` reads it."""
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer, max_positions=64)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_build_is_memoised(tiny_dir):
    s = spec("hf", tiny_dir, dtype="float32", device="cpu", local_files_only=True)
    lm = s.build()
    assert isinstance(lm, HFModel)
    assert s.build() is lm
    assert spec("hf", tiny_dir, device="cpu", local_files_only=True, dtype="float32").build() is lm
    assert lm.spec == s  # device and dtype were given: the recorded spec is the one built
    # a spec that leaves this machine's defaults out builds the same model as one naming them
    bare = spec("hf", tiny_dir, local_files_only=True)
    assert bare.resolved().build() is bare.build()


def test_model_records_resolved_spec_and_pickles_as_it(tiny_dir):
    bare = spec("hf", tiny_dir, local_files_only=True)
    lm = bare.build()
    # unspecified device and dtype are recorded as resolved, so a copy is the same model
    assert (
        lm.spec
        == bare.resolved()
        == spec(
            "hf",
            tiny_dir,
            dtype=str(next(lm.model.parameters()).dtype),
            device=str(lm.device),
            local_files_only=True,
        )
    )
    payload = pickle.dumps(functools.partial(lm.context, "the cat"))  # a callable closing over lm
    assert len(payload) < 1_000  # the spec, not the weights
    assert pickle.loads(pickle.dumps(lm)) is lm
    assert pickle.loads(payload).args == ("the cat",)
    assert copy.copy(lm) is lm and copy.deepcopy(lm) is lm


def test_from_pretrained_models_pickle_to_themselves(tiny_dir):
    lm = HFModel.from_pretrained(tiny_dir, device="cpu", dtype="bfloat16")
    assert lm.spec == spec("hf", tiny_dir, dtype="bfloat16", device="cpu")
    assert pickle.loads(pickle.dumps(lm)) is lm  # while alive, not loaded a second time


def test_in_memory_model_refuses_to_pickle_saying_how(tiny_dir):
    loaded = HFModel.from_pretrained(tiny_dir, device="cpu")
    wrapped = HFModel(loaded.model, loaded.tokenizer)
    assert wrapped.spec is None
    with pytest.raises(TypeError, match=r"cannot pickle HFModel.*ppl\.models\.spec\("):
        pickle.dumps(wrapped)
    # keyword values that a spec cannot hold leave the model without one, too
    unplain = HFModel.from_pretrained(tiny_dir, device="cpu", config=loaded.model.config)
    assert unplain.spec is None


@pytest.mark.slow
def test_unpickling_in_another_process_builds_the_same_model(tiny_dir, tmp_path):
    lm = spec("hf", tiny_dir, dtype="float32", device="cpu").build()
    ids = lm.encode("the cat sat")
    _, expected = lm.extend([None], [ids])
    (tmp_path / "lm.pkl").write_bytes(pickle.dumps(lm))
    code = (
        "import pickle, sys\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "lm = pickle.loads(data)\n"
        "assert pickle.loads(data) is lm, 'built twice'\n"
        f"_, logprobs = lm.extend([None], [{ids!r}])\n"
        "import json; print(repr(lm.spec)); print(json.dumps(logprobs[0].tolist()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "lm.pkl")],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout.splitlines()
    assert out[0] == repr(lm.spec)
    assert torch.allclose(torch.tensor(json.loads(out[1])), expected[0], atol=1e-5)


def test_kv_cache_options_travel_with_the_spec(tiny_dir, tmp_path):
    s = spec("hf", tiny_dir, dtype="float32", device="cpu", kv_cache="batch", kv_block=8)
    assert s != spec("hf", tiny_dir, dtype="float32", device="cpu")
    assert s.options == () and (s.kv_cache, s.kv_block) == ("batch", 8)
    assert "kv_cache='batch'" in repr(s) and "kv_block=8" in repr(s)
    assert str(s).endswith("(dtype=float32, device=cpu, kv_cache=batch, kv_block=8)")
    assert "kv_cache" not in repr(spec("hf", tiny_dir))  # the defaults are not spelled out
    lm = s.build()
    assert (lm.kv_cache, lm.kv_block) == ("batch", 8)
    assert lm.spec == s and pickle.loads(pickle.dumps(lm)) is lm
    paged = HFModel.from_pretrained(tiny_dir, device="cpu", dtype="float32", kv_block=4)
    assert (paged.kv_cache, paged.kv_block) == ("paged", 4)
    assert paged.spec == spec("hf", tiny_dir, dtype="float32", device="cpu", kv_block=4)
    with pytest.raises(ValueError, match="unknown kv_cache 'dense'"):
        spec("hf", "gpt2", kv_cache="dense")
    with pytest.raises(ValueError, match="kv_block must be a positive number"):
        spec("embedded", kv_block=0)
    with pytest.raises(ValueError, match="unknown step 'fast'"):
        spec("embedded", step="fast")
    # refused before any weights are read: a path that does not exist is never looked at
    with pytest.raises(ValueError, match="unknown step 'fast'"):
        ppl.models.load(step="fast")
    with pytest.raises(ValueError, match="kv_block must be a positive number"):
        HFModel.from_pretrained(str(tmp_path / "nowhere"), kv_block=-1)
    eager = spec("hf", tiny_dir, dtype="float32", device="cpu", step="eager")
    assert "step='eager'" in repr(eager) and str(eager).endswith("step=eager)")
    assert eager.build().step == "eager"
    buckets = HFModel.from_pretrained(tiny_dir, device="cpu", dtype="float32", step="buckets")
    assert buckets.step == "buckets" and buckets.spec.step == "buckets"


def test_kv_options_are_one_value_with_one_set_of_checks(tiny_dir):
    assert KVOptions() == KVOptions("paged", 16, "auto") and KVOptions().changed() == []
    kv = KVOptions(kv_cache="batch", step="eager")
    assert kv.changed() == [("kv_cache", "batch"), ("step", "eager")]
    assert kv.keywords() == {"kv_cache": "batch", "kv_block": 16, "step": "eager"}
    s = spec("hf", tiny_dir, dtype="float32", device="cpu", **kv.keywords())
    assert s.kv == kv and hash(s.kv) == hash(kv)
    lm = s.build()
    assert (lm.kv_cache, lm.step) == ("batch", "eager")
    for bad, message in (
        ({"kv_cache": "dense"}, "unknown kv_cache 'dense'"),
        ({"kv_block": True}, "kv_block must be a positive number of tokens, got True"),
        ({"kv_block": 2.0}, "kv_block must be a positive number of tokens, got 2.0"),
        ({"step": "fast"}, "unknown step 'fast': use one of 'auto', 'eager'"),
    ):
        with pytest.raises(ValueError, match=message):
            KVOptions(**bad)
        with pytest.raises(ValueError, match=message):
            HFModel(lm.model, lm.tokenizer, **bad)
    with pytest.raises(ValueError, match="unknown step 'fast'"):
        lm.step = "fast"


# -- the embedded model --------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_model_pickles_as_its_spec(embedded_lm):
    dtype = str(next(embedded_lm.model.parameters()).dtype)
    assert embedded_lm.spec == spec("embedded", dtype=dtype, device=str(embedded_lm.device))
    assert len(pickle.dumps(embedded_lm)) < 1_000
    assert pickle.loads(pickle.dumps(embedded_lm)) is embedded_lm


@pytest.mark.slow
def test_embedded_model_with_another_kv_cache_shares_the_weights(embedded_lm):
    import ppl.models

    batch = ppl.models.load(kv_cache="batch")
    assert batch.kv_cache == "batch" and embedded_lm.kv_cache == "paged"
    assert batch.model is embedded_lm.model  # loaded once
    assert ppl.models.load(kv_cache="batch") is batch
    assert batch.spec == dataclasses.replace(embedded_lm.spec, kv_cache="batch")
    assert pickle.loads(pickle.dumps(batch)) is batch
    assert spec("embedded").build() is embedded_lm
    assert spec("embedded").build() is embedded_lm
    assert ModelSpec.parse("embedded").build() is embedded_lm
    assert embedded_lm.spec.build() is embedded_lm


def test_auto_dtype_is_float32_on_the_cpu():
    spec_module = importlib.import_module("ppl.models.spec")  # `ppl.models.spec` is the function
    cpu = torch.device("cpu")
    assert spec_module.resolve_dtype(None, cpu) is torch.float32
    assert spec_module.resolve_dtype("auto", cpu) is torch.float32
    assert spec_module.resolve_dtype("bfloat16", cpu) is torch.bfloat16  # one argument away
    # "auto" is the default spelled out: the same spec, resolved the same way
    assert spec("embedded", dtype="auto") == spec("embedded")
    assert spec("embedded", dtype="auto", device="cpu").resolved().dtype == "float32"
    with pytest.raises(ValueError, match="use e.g. 'auto', 'float32'"):
        spec_module.resolve_dtype("float33", cpu)
