"""`NativeLlama` against transformers' `LlamaForCausalLM`, the reference it must match.

Every comparison runs the same weights through both: random tiny models of several shapes
(grouped, multi-head and multi-query attention, tied and untied output layers), and the
embedded model, whose reference is `to_transformers()`, transformers' own class over the
same tensors.
"""

import os
import subprocess
import sys

import pytest
import torch

from ppl.models.hf.compat import forward_args
from ppl.models.hf.model import HFModel
from ppl.models.hf.native import Cache, NativeLlama, supported
from ppl.models.hf.tiny import tiny_llama, tiny_tokenizer

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "hello world, hello ppl"]

SHAPES = {
    "grouped": dict(layers=2, hidden=32, heads=4, kv_heads=2),
    "multi-head": dict(layers=2, hidden=32, heads=4, kv_heads=4, tie_word_embeddings=True),
    "multi-query": dict(layers=3, hidden=24, heads=3, kv_heads=1, rope_theta=500.0),
}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(CORPUS)


@pytest.fixture(scope="module", params=sorted(SHAPES))
def pair(request, tokenizer):
    """(transformers' model, the native model over its weights)"""
    hf = tiny_llama(tokenizer, **SHAPES[request.param])
    hf.config._attn_implementation = "sdpa"
    native = NativeLlama.from_transformers(hf)
    assert native is not None
    return hf, native


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_logits_match_transformers_with_masks_positions_and_cache(pair, tokenizer):
    hf, native = pair
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tokenizer), (3, 9), generator=gen)
    with torch.inference_mode():
        same(native(input_ids=ids).logits, hf(input_ids=ids).logits)
        # left padding of row 0, right padding of row 2, explicit positions
        mask = torch.ones(3, 9, dtype=torch.long)
        mask[0, :4] = 0
        mask[2, 6:] = 0
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        got = native(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        want = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        real = mask.bool()
        same(got[real], want[real])
        # a cached prefix, then several new tokens, then one: only some logits kept
        from transformers import DynamicCache

        mine, theirs = Cache(), DynamicCache()
        arg = forward_args(hf)[1]  # what transformers calls the cache in this release
        native(input_ids=ids[:, :4], past_key_values=mine)
        hf(input_ids=ids[:, :4], **{arg: theirs})
        assert mine.get_seq_length() == theirs.get_seq_length() == 4
        got = native(input_ids=ids[:, 4:6], past_key_values=mine, logits_to_keep=2).logits
        want = hf(input_ids=ids[:, 4:6], **{arg: theirs}, logits_to_keep=2).logits
        assert got.shape == (3, 2, hf.config.vocab_size)
        same(got, want)
        keep = torch.tensor([0, 2])
        got = native(input_ids=ids[:, 6:], past_key_values=mine, logits_to_keep=keep).logits
        want = hf(input_ids=ids[:, 6:], **{arg: theirs}, logits_to_keep=keep).logits
        same(got, want)
        # a 4D boolean mask, as the fixed-shape steps give it
        mask4 = torch.tril(torch.ones(9, 9, dtype=torch.bool))[None, None].expand(3, 1, 9, 9)
        mask4 = mask4.clone()
        mask4[1, :, :, 0] = False
        mask4[1, :, 0, 0] = True
        got = native(input_ids=ids, attention_mask=mask4).logits
        want = hf(input_ids=ids, attention_mask=mask4).logits
        same(got, want)


@pytest.mark.parametrize(
    "kv_cache,step", [("paged", "eager"), ("batch", "eager"), ("paged", "buckets")]
)
def test_hfmodel_gives_the_same_logprobs_on_either_engine(pair, tokenizer, kv_cache, step):
    hf, native = pair
    results = []
    for model in (hf, native):
        lm = HFModel(model, tokenizer, kv_cache=kv_cache, step=step)
        first, a = lm._extend([None, None], [[1, 5, 6, 7], [1, 8]])
        second, b = lm._extend([first[0], first[1], first[0]], [[9], [10], [13]])
        _, c = lm._extend([second[1], second[2]], [[4, 5, 6], [7]])
        results.append(torch.cat([a, b, c]))
    same(results[1], results[0])


def test_the_native_model_never_imports_transformers(tmp_path, tokenizer):
    hf = tiny_llama(tokenizer, layers=1)
    hf.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    code = (
        "import sys, torch\n"
        "from ppl.models.hf.native import NativeLlama\n"
        "from ppl.models.hf.model import HFModel\n"
        "from ppl.models.hf.gguf import read_tokenizer\n"
        f"m = NativeLlama.from_directory({str(tmp_path)!r}, torch.float32)\n"
        f"lm = HFModel(m, read_tokenizer({str(tmp_path)!r}))\n"
        "ctx = lm.context('the cat')\n"
        "assert ctx.logprobs().shape == (lm.vocab_size,)\n"
        "for step in ('buckets', 'eager'):\n"
        "    lm.step = step\n"
        "    lm._extend([None, None], [[1, 5], [1]])\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_saved_model_reads_back_as_the_same_native_model(tmp_path, tokenizer):
    hf = tiny_llama(tokenizer, layers=2, tie_word_embeddings=True)
    hf.save_pretrained(tmp_path)
    native = NativeLlama.from_directory(tmp_path, torch.float32)
    assert native is not None and native.lm_head.weight is native.model.embed_tokens.weight
    ids = torch.tensor([[1, 4, 5, 6]])
    with torch.inference_mode():
        same(native(input_ids=ids).logits, hf(input_ids=ids).logits)
    bf16 = NativeLlama.from_directory(tmp_path, torch.bfloat16)
    assert bf16 is not None and bf16.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "change,why",
    [
        ({"model_type": "qwen2"}, "model_type 'qwen2'"),
        ({"attention_bias": True}, "attention_bias=True"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
        (
            {"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}},
            "RoPE",
        ),
        ({"layer_types": ["sliding_attention"]}, "layer_types"),
    ],
)
def test_configs_it_cannot_compute_exactly_are_refused(tokenizer, change, why):
    config = tiny_llama(tokenizer).config.to_dict()
    assert supported(config) is None
    config.update(change)
    assert why in supported(config)


def test_engine_native_refuses_another_architecture(tmp_path, tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="engine='native' computes Llama models only"):
        HFModel.from_pretrained(str(tmp_path), device="cpu", engine="native")
    with pytest.raises(ValueError, match="unknown engine 'fast'"):
        HFModel.from_pretrained(str(tmp_path), device="cpu", engine="fast")
    lm = HFModel.from_pretrained(str(tmp_path), device="cpu")  # auto: transformers
    assert type(lm.model).__name__ == "Qwen2ForCausalLM"


def test_engine_native_on_a_local_checkpoint_is_recorded_in_the_spec(tmp_path, tokenizer):
    tiny_llama(tokenizer, layers=1).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    lm = HFModel.from_pretrained(str(tmp_path), device="cpu", engine="native")
    assert isinstance(lm.model, NativeLlama)
    assert dict(lm.spec.options) == {"engine": "native"}
    assert isinstance(lm.spec.build().model, NativeLlama)
    plain = HFModel.from_pretrained(str(tmp_path), device="cpu")  # auto: not a GGUF file
    assert type(plain.model).__name__ == "LlamaForCausalLM"


# -- the embedded model ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_embedded_model_is_native_and_matches_transformers(embedded_lm):
    model = embedded_lm.model
    assert isinstance(model, NativeLlama)
    reference = model.to_transformers()
    # the same memory, not a copy
    for name, tensor in reference.state_dict().items():
        assert tensor.data_ptr() == model.state_dict()[name].data_ptr(), name
    ids = torch.tensor([embedded_lm.encode(embedded_lm.chat("Name a colour."))])
    with torch.inference_mode():
        got = model(input_ids=ids).logits
        want = reference(input_ids=ids).logits
    # the CPU products sum in another order than transformers' (`native.Linear`, `pack`):
    # last-bit differences, which 30 layers grow to about 1e-4 in a logit
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
    tv = 0.5 * (got.softmax(-1) - want.softmax(-1)).abs().sum(-1).max()
    assert tv < 1e-4, tv
    # transformers' generate, on the native model's weights
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 3)


@pytest.mark.slow
def test_the_embedded_model_loads_without_importing_transformers(embedded_lm):
    if os.environ.get("PPL_CACHE_DIR", "").strip().lower() == "off":
        pytest.skip("the weights cache is off: every load converts through transformers")
    code = (
        "import sys, ppl\n"
        "lm = ppl.models.load(device='cpu')\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
        "print(lm)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=300, capture_output=True, text=True
    )
    assert "embedded SmolLM2-135M-Instruct" in out.stdout


@pytest.mark.slow
def test_the_embedded_model_on_transformers_is_one_argument_away(embedded_lm):
    import ppl

    lm = ppl.models.load(device="cpu", engine="transformers")
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert dict(lm.spec.options) == {"engine": "transformers"}
    assert lm.spec.build() is lm
    a = lm.context(lm.chat("Hi")).logprobs()
    b = embedded_lm.context(embedded_lm.chat("Hi")).logprobs()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
