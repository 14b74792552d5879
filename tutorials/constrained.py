"""Constrained generation: a Lark grammar and a JSON schema, sampled exactly.

Run it with `python tutorials/constrained.py` (after `make setup`). It loads the embedded
SmolLM2-135M-Instruct and runs SMC twice.

1. An arithmetic expression, from a Lark grammar, with a `condition` on top: fewer than 20
   characters. `ppl.generate` is a sub-program that draws one token per step, so SMC reweights
   and resamples between tokens.
2. A JSON object that follows a schema, with `ppl.generate` run as the program itself.

The masks of the grammar restrict each draw, and each particle's weight gains the model
probability the mask kept. So the posterior is the model's own distribution conditioned on the
language (and on the length), not the distorted one of mask-and-renormalise decoding; and
`log_evidence` estimates the log probability that the model, unconstrained, would have written
such a text by itself. Finished texts parse: the grammar gives a lark tree, the schema a dict.
"""

from __future__ import annotations

import argparse

import ppl
from ppl import condition, program

ARITHMETIC = ppl.Grammar(r"""
start: sum
?sum: product | sum ADD product
?product: NUMBER | "(" sum ")" | product "*" NUMBER
ADD: "+" | "-"
NUMBER: /[0-9]{1,3}/
%ignore " "
""")

PERSON = ppl.JSONSchema(
    {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
)


@program
def short_expression(lm, question: str, max_tokens: int = 24):
    ctx = lm.context(lm.chat(question))
    text = ppl.generate(ctx, constraint=ARITHMETIC, max_tokens=max_tokens)
    condition(len(text) < 20)
    return text


def show(title: str, posterior: ppl.Posterior, top: int = 5) -> None:
    print(f"\n{title}")
    print(f"log evidence {posterior.log_evidence:.3f}, final ESS {posterior.ess[-1]:.1f}")
    for text, weight in list(posterior.distribution().items())[:top]:
        print(f"{weight:6.3f}  {text!r}")


def main(particles: int = 16, seed: int = 0, lm=None) -> tuple[ppl.Posterior, ppl.Posterior]:
    """Run both tasks and print their posteriors; returns them."""
    if lm is None:
        print("loading the embedded model (SmolLM2-135M-Instruct) ...", flush=True)
        lm = ppl.models.load()
    question = "Write a short arithmetic expression, nothing else."
    sums = ppl.smc(short_expression, lm, question, particles=particles, seed=seed)
    show("arithmetic expressions under 20 characters:", sums)
    if sums.log_evidence > float("-inf"):
        text = sums.samples(1)[0]
        print(f"parse tree of {text!r}:\n{ARITHMETIC.parse(text).pretty()}")

    people = ppl.smc(
        ppl.generate,
        lm.context(lm.chat("Describe a person as JSON.")),
        constraint=PERSON,
        max_tokens=60,
        particles=particles,
        seed=seed,
    )
    show("JSON objects that follow the schema:", people, top=3)
    if people.log_evidence > float("-inf"):
        print(f"parsed: {PERSON.parse(people.samples(1)[0])}")
    return sums, people


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.particles, args.seed)
