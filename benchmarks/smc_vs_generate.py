"""SMC on the short-words task against HF `generate`, in one process, on the embedded model.

For each number of particles N and number of tokens T, this times

* ppl's SMC: N particles, each generating exactly T tokens, every finished word at most five
  letters (a particle that breaks the rule or ends early gets weight zero and is resampled away);
* transformers' `generate` sampling N sequences of exactly T new tokens from the same prompt
  (ancestral sampling from the full distribution: no top-k, no top-p, temperature 1).

SMC runs on the model `ppl.models.load()` gives: for the embedded model ppl's own Llama forward
pass (`--engine auto`), whose CPU products of a few rows are faster than transformers' (see
`ppl.models.hf.native.Linear`); `generate` always runs transformers' `LlamaForCausalLM` over the
same weight tensors. `--engine transformers` runs SMC on that same model too, to separate what
SMC saves from what the forward pass saves.

and prints the ratio of their median times. Both make T forward passes over N rows; SMC adds
the program, the constraint, resampling and KV-cache forking. It also checks that SMC never
re-encodes: the tokens it feeds the model must equal the prompt (once, shared by all particles)
plus one token per distinct generated prefix whose next-token distribution was needed.

On a GPU (`--device cuda`) it also reports

* `--cold`: the first SMC run and the first `generate` run of each size in this process, before
  any warm-up (CUDA is initialised first by one untimed one-token forward pass, so that neither
  pays for it; SMC runs first, so it meets every new kernel first). Run one size per process
  for the cold figures of a fresh process;
* the milliseconds per step of SMC (its warm time over T) against a decode step of a plain batch
  of N rows from transformers' static cache (`generate(cache_implementation="static")`, which
  transformers compiles into CUDA graphs on a GPU): the column `ref ms`.

`--profile` adds, after the table, where one run of each spends its time: the model call (its
attention layers, its output layer, the rest), ppl's code around it in the forward pass, and
everything outside the forward pass (`Split`).

`--step` picks how the model runs decode steps (`HFModel.step`: "auto" is CUDA graphs on a GPU,
eager on the CPU).

Run: `make bench`, or `python benchmarks/smc_vs_generate.py [--reps 3] [--device cpu]
[--warmup K] [--step auto] [--cold] [--reference] [--profile] [--smoke]` (`--smoke`: a tiny
random Llama in place of the embedded model, N = 2, T = 3).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from _smoke import parse_args, tiny_hf_lm

import ppl
from ppl import condition, program, sample


def letters(word: str) -> int:
    return sum(ch.isalpha() for ch in word)


@program
def short_words_fixed(lm, prompt: str, tokens: int):
    """The short-words story, exactly `tokens` tokens long (no early end)."""
    ctx = lm.context(prompt)
    for _ in range(tokens):
        tok = sample(ctx.next_token())
        condition(not tok.is_eos)
        ctx = ctx + tok
        condition(all(letters(w) <= 5 for w in ctx.text.split()))
    return ctx.text


def run_smc(lm, prompt: str, n: int, t: int, seed: int) -> ppl.Posterior:
    return ppl.smc(short_words_fixed, lm, prompt, t, particles=n, seed=seed, progress=False)


def run_generate(
    lm, prompt_ids: list[int], n: int, t: int, seed: int, static: bool = False
) -> torch.Tensor:
    """`generate` sampling n sequences of exactly t new tokens; `static`: with transformers'
    static cache (compiled into CUDA graphs on a GPU)."""
    torch.manual_seed(seed)
    ids = torch.tensor([prompt_ids] * n, device=lm.device)
    options = {"cache_implementation": "static"} if static else {}
    with torch.inference_mode():
        out = lm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            max_new_tokens=t,
            min_new_tokens=t,
            pad_token_id=min(lm.eos_token_ids),
            **options,
        )
    if out.is_cuda:
        torch.cuda.synchronize()  # the timing covers the work, not just its launch
    assert out.shape == (n, len(prompt_ids) + t), out.shape
    return out


def ideal_tokens_fed(lm, prompt: str, n: int, t: int, seed: int) -> tuple[ppl.Posterior, int]:
    """One SMC run and the ideal tokens fed for it, counted independently of the backend.

    The ideal feeds the prompt once and each distinct generated prefix whose next-token
    distribution was asked for once (its last token). Any re-encoding would exceed it.
    """
    requested: set[tuple[int, ...]] = set()
    original = lm.compute_logprobs

    def counting(contexts):
        for ctx in contexts:
            if ctx._logprobs is None:
                requested.add(tuple(ctx.tokens))
        return original(contexts)

    lm.compute_logprobs = counting
    try:
        post = run_smc(lm, prompt, n, t, seed)
    finally:
        del lm.compute_logprobs
    prompt_len = len(lm.encode(prompt))
    generated = sum(1 for seq in requested if seq)
    return post, prompt_len + generated


def main() -> None:
    parser = argparse.ArgumentParser(description="SMC vs HF generate on the short-words task")
    parser.add_argument("--particles", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--tokens", type=int, nargs="+", default=[30, 60])
    parser.add_argument("--reps", type=int, default=3, help="timed runs of each, interleaved")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, or auto (ppl's pick)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed runs of each at each size (default 1 on the CPU, 4 on a GPU)",
    )
    parser.add_argument("--step", default="auto", help="HFModel.step: auto, eager, buckets, graphs")
    parser.add_argument(
        "--engine",
        default="auto",
        help="what runs SMC's forward pass: auto (ppl's native Llama pass for the embedded "
        "model), native or transformers; generate always runs transformers' model",
    )
    parser.add_argument(
        "--cold", action="store_true", help="time the first runs of each size (see above)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the table, where one run of each spends its time (see Split)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="time a static-cache generate step (default: on a GPU)",
    )
    args = parse_args(parser, particles=[2], tokens=[3], reps=1, warmup=0)

    torch.set_num_threads(torch.get_num_threads())
    load = tiny_hf_lm if args.smoke else ppl.models.load
    options = {} if args.smoke else {"engine": args.engine}
    lm = load(device=args.device, dtype=args.dtype, step=args.step, **options)
    cuda = lm.device.type == "cuda"
    if args.warmup is None:
        args.warmup = 4 if cuda else 1
    reference = args.reference or cuda
    prompt = lm.chat("Tell me a story.")
    prompt_ids = lm.encode(prompt)
    print(
        f"{'tiny' if args.smoke else 'embedded'} model on {lm.device} ({lm.model.dtype}), "
        f"step {lm.step!r}, prompt {len(prompt_ids)} tokens, {torch.get_num_threads()} threads, "
        f"SMC on {type(lm.model).__name__}"
    )
    with torch.inference_mode():  # CUDA and the model's first kernels, before any timing
        lm.model(input_ids=torch.tensor([prompt_ids[:1]], device=lm.device))

    header = (
        f"{'N':>3} {'T':>3}  {'SMC s':>7} {'generate s':>10} {'ratio':>6}  "
        f"{'SMC fed':>7} {'ideal':>6} {'generate fed':>12}  {'final ESS':>9}"
    )
    if args.cold:
        header += f"  {'cold SMC s':>10} {'cold gen s':>10} {'cold ratio':>10}"
    if reference:
        header += f"  {'SMC ms':>7} {'ref ms':>7} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for n in args.particles:
        for t in args.tokens:
            cold = ""
            if args.cold:  # the first runs of this size in the process
                start = time.perf_counter()
                run_smc(lm, prompt, n, t, seed=args.reps + args.warmup)
                cold_smc = time.perf_counter() - start
                start = time.perf_counter()
                run_generate(lm, prompt_ids, n, t, seed=args.reps + args.warmup)
                cold_gen = time.perf_counter() - start
                cold = f"  {cold_smc:>10.2f} {cold_gen:>10.2f} {cold_smc / cold_gen:>10.2f}"
            smc_times, gen_times = [], []
            # untimed runs of each at this size first, so that both are timed warm. SMC's
            # batches change shape from step to step (resampled particles share rows), and on
            # a GPU each new shape costs once (kernel choice, allocator pools): cold, its first
            # runs there took 2-4x as long as warm ones. Seeds other than the timed ones.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ppl.InferenceWarning)
                for k in range(args.warmup):
                    run_smc(lm, prompt, n, t, seed=args.reps + k)
                    run_generate(lm, prompt_ids, n, t, seed=args.reps + k)
            for rep in range(args.reps):
                start = time.perf_counter()
                run_smc(lm, prompt, n, t, seed=rep)
                smc_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                run_generate(lm, prompt_ids, n, t, seed=rep)
                gen_times.append(time.perf_counter() - start)
            post, ideal = ideal_tokens_fed(lm, prompt, n, t, seed=0)
            smc_s, gen_s = statistics.median(smc_times), statistics.median(gen_times)
            gen_fed = n * len(prompt_ids) + n * (t - 1)  # every row reads the prompt
            step = ""
            if reference:
                smc_ms = 1000 * smc_s / t
                try:
                    ref_ms = 1000 * static_step_seconds(lm, prompt_ids, n, t, args.reps)
                except Exception as error:  # compiling needs a working toolchain: keep the row
                    print(f"static-cache reference failed: {error!r}", flush=True)
                    ref_ms = float("nan")
                step = f"  {smc_ms:>7.2f} {ref_ms:>7.2f} {smc_ms / ref_ms:>6.2f}"
            print(
                f"{n:>3} {t:>3}  {smc_s:>7.2f} {gen_s:>10.2f} {smc_s / gen_s:>6.2f}  "
                f"{post.stats['tokens_fed']:>7} {ideal:>6} {gen_fed:>12}  {post.final_ess:>9.1f}"
                f"{cold}{step}",
                flush=True,
            )
    if cuda:
        print(f"CUDA graphs captured: {lm.graphs_captured}; shapes met: {lm.step_shapes}")
    if args.profile:
        profile(lm, prompt, prompt_ids, args.particles, args.tokens)


class Split:
    """Where a run spends its time, timed by hooks: the model call (its attention layers, its
    output layer, the rest of it), ppl's code around the model call inside `HFModel._forward`
    (the KV plan, log-softmax, copying the log-probabilities out), and everything outside the
    forward pass (the program, drawing, resampling; for `generate`, its sampling loop)."""

    def __init__(self, lm) -> None:
        self.lm, self.seconds, self.started = lm, {}, {}
        self.sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
        # ppl's native engine runs `generate` on transformers' model over the same weights
        twin = getattr(lm.model, "to_transformers", None)
        models = [lm.model] + ([twin()] if twin is not None else [])
        parts: dict[str, list] = {"model": [], "attention": [], "output layer": []}
        for model in models:
            parts["model"].append(model)
            parts["attention"] += [m for n, m in model.named_modules() if n.endswith("self_attn")]
            parts["output layer"].append(model.get_output_embeddings())
        self.handles = []
        for part, modules in parts.items():
            for module in modules:
                pre = module.register_forward_pre_hook(lambda *_, k=part: self.start(k))
                post = module.register_forward_hook(lambda *_, k=part: self.stop(k))
                self.handles += [pre, post]

    def start(self, part: str) -> None:
        self.sync()
        self.started[part] = time.perf_counter()

    def stop(self, part: str) -> None:
        self.sync()
        elapsed = time.perf_counter() - self.started.pop(part)
        self.seconds[part] = self.seconds.get(part, 0.0) + elapsed

    def run(self, fn, with_forward: bool) -> dict[str, float]:
        self.seconds = {}
        original = self.lm._forward
        if with_forward:

            def forward(*args):
                self.start("forward")
                try:
                    return original(*args)
                finally:
                    self.stop("forward")

            self.lm._forward = forward
        try:
            self.start("total")
            fn()
            self.stop("total")
        finally:
            if with_forward:
                del self.lm._forward
        return dict(self.seconds)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def profile(lm, prompt: str, prompt_ids: list[int], particles, tokens) -> None:
    """One run of SMC and one of `generate` at each size, split by `Split`, in % of the run."""
    split = Split(lm)
    cols = ["total s", "model", "attention", "output layer", "rest of model", "ppl forward",
            "outside"]  # fmt: skip
    print("\nwhere the time goes (one run each; % of its total):")
    print(f"{'':>13} " + " ".join(f"{c:>13}" for c in cols))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ppl.InferenceWarning)
            for n in particles:
                for t in tokens:
                    for name, fn, ours in (
                        ("SMC", lambda n=n, t=t: run_smc(lm, prompt, n, t, seed=0), True),
                        ("generate", lambda n=n, t=t: run_generate(lm, prompt_ids, n, t, 0), False),
                    ):
                        s = split.run(fn, with_forward=ours)
                        total, model = s["total"], s.get("model", 0.0)
                        forward = s.get("forward", model)
                        parts = [
                            model,
                            s.get("attention", 0.0),
                            s.get("output layer", 0.0),
                            model - s.get("attention", 0.0) - s.get("output layer", 0.0),
                            forward - model,
                            total - forward,
                        ]
                        row = " ".join(f"{100 * x / total:>12.1f}%" for x in parts)
                        print(f"{name:>8} {n:>2}x{t:<2} {total:>13.2f} {row}", flush=True)
    finally:
        split.close()


def static_step_seconds(lm, prompt_ids: list[int], n: int, t: int, reps: int) -> float:
    """Seconds per decode step of a plain batch of n rows with transformers' static cache: the
    median of `reps` warm runs of t tokens less a run of one token (the prefill), over t - 1."""
    times = {}
    for tokens in (1, t):
        for k in range(2):  # warm-up: compiling and capturing happen here
            run_generate(lm, prompt_ids, n, tokens, seed=100 + k, static=True)
        runs = []
        for rep in range(reps):
            start = time.perf_counter()
            run_generate(lm, prompt_ids, n, tokens, seed=rep, static=True)
            runs.append(time.perf_counter() - start)
        times[tokens] = statistics.median(runs)
    return max(times[t] - times[1], 0.0) / (t - 1)


if __name__ == "__main__":
    main()
