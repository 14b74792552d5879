"""A `ppl serve` on a toy character model, for the server tests: `python -m tests.serve.toyserver
PORT [--timeout S] [--max-running N] [--max-queue N] [--delay S]`."""

from __future__ import annotations

import argparse
import sys
import time

import ppl
from ppl import factor, program, sample
from ppl.models import FunctionLM

CHARS = list('{}[]",:0123456789abcdefghijklmnopqrstuvwxyz ') + ["true", "false", "null"]
DELAY = [0.0]
# EOS likely, spaces rare (JSON allows them between any two tokens)
WEIGHTS = [0.0] + [0.05 if c == " " else 1.0 for c in CHARS] + [2.0]


def weights(prefix):
    if DELAY[0]:
        time.sleep(DELAY[0])
    return WEIGHTS


class ChatLM(FunctionLM):
    """The toy model with a chat template: "role: content" for each message, in its letters."""

    def chat(self, messages, *, system=None):
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return " ".join(lines) + " assistant: "


lm = ChatLM(["<s>", *CHARS, "<eos>"], weights, eos="<eos>", bos="<s>", max_length=512)


@program
def coin(flips: int = 3):
    """Flips of a fair coin, conditioned on at least one head."""
    heads = 0
    for _ in range(flips):
        heads += sample(ppl.distributions.Bernoulli(0.5))
    factor(0.0 if heads else float("-inf"))
    return heads


@program
def echo(lm, text: str):
    """The number of tokens of `text` as a prompt (a program of no choices)."""
    return len(lm.context(text).prompt_tokens)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--max-running", type=int, default=16)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--api-key")
    parser.add_argument("--compile-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    DELAY[0] = args.delay
    from ppl.serve import serve

    serve(
        lm,
        "toy",
        programs={"coin": coin, "echo": echo},
        port=args.port,
        timeout=args.timeout,
        max_running=args.max_running,
        max_queue=args.max_queue,
        api_key=args.api_key,
        compile_seconds=args.compile_seconds,
        ready=lambda url: print(f"ready {url}", flush=True),
    )


if __name__ == "__main__":
    sys.exit(main())
