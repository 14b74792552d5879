"""How often SMC finds valid texts when the mask cannot enforce the whole schema.

For a JSON schema with keywords the mask engine lacks, the mask enforces a relaxed schema and
the reference validator the rest (on prefixes where it can, else at the end): particles that
break the rest die, and a run in which all die has no sample (`log_evidence` is -inf). On the
embedded model, for each schema and N in `--particles`, this runs SMC over `--seeds` seeds and
reports the share of runs with at least one valid particle, the mean number of valid finished
particles, and the spread (standard deviation) of log Z over the runs that found one.

Run: `python benchmarks/relaxed_efficiency.py [--particles 8 32] [--seeds 10] [--tokens 48]
[--smoke]` (`--smoke`: a character-level toy model, N = 2, one seed, at most 12 tokens).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

from _smoke import parse_args, toy_lm

import ppl

COLOURS = {"enum": ["red", "green", "blue", "black", "white"]}
SCHEMAS = {
    "uniqueItems (prefix)": (
        "List three different colours as a JSON array.",
        {"type": "array", "items": COLOURS, "minItems": 3, "maxItems": 3, "uniqueItems": True},
    ),
    "dependentRequired (end)": (
        "Describe a person as a JSON object with a name, an email and a phone number.",
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 20},
                "email": {"type": "string", "maxLength": 30},
                "phone": {"type": "string", "maxLength": 15},
            },
            "required": ["name"],
            "additionalProperties": False,
            "dependentRequired": {"email": ["phone"]},
        },
    ),
    "not (prefix)": (
        "Give a colour other than red as a JSON object.",
        {
            "type": "object",
            "properties": {"colour": {**COLOURS, "not": {"const": "red"}}},
            "required": ["colour"],
            "additionalProperties": False,
        },
    ),
    "if/then/else (end)": (
        "Give a number between 0 and 20 as JSON.",
        {
            "type": "integer",
            "minimum": 0,
            "maximum": 20,
            "if": {"minimum": 10},
            "then": {"multipleOf": 2},
            "else": {"multipleOf": 3},
        },
    ),
    "contains (end)": (
        "List some colours, including blue, as a JSON array.",
        {"type": "array", "items": COLOURS, "maxItems": 4, "contains": {"const": "blue"}},
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    args = parse_args(parser, particles=[2], seeds=1, tokens=12)
    lm = toy_lm() if args.smoke else ppl.models.load(device=args.device)
    header = f"{'schema':26}{'N':>4}{'runs with a valid text':>24}{'valid / run':>13}"
    print(header + f"{'sd of log Z':>13}{'s / run':>9}")
    for name, (question, schema) in SCHEMAS.items():
        c = ppl.JSONSchema(schema)
        assert c.relaxed, name
        prompt = lm.chat(question)
        for n in args.particles:
            found, valid, log_z, seconds = 0, [], [], []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ppl.InferenceWarning)
                    post = ppl.smc(
                        ppl.generate,
                        lm.context(prompt),
                        constraint=c,
                        max_tokens=args.tokens,
                        particles=n,
                        seed=seed,
                    )
                seconds.append(time.perf_counter() - t0)
                alive = [v for v, lw in zip(post.values, post.log_weights) if lw > -math.inf]
                assert all(c.check(v) is None for v in alive)  # every output valid
                valid.append(len(alive))
                if post.log_evidence > -math.inf:
                    found += 1
                    log_z.append(post.log_evidence)
            spread = statistics.stdev(log_z) if len(log_z) > 1 else float("nan")
            print(
                f"{name:26}{n:4}{f'{found} / {args.seeds}':>24}"
                f"{statistics.mean(valid):13.1f}{spread:13.2f}{statistics.median(seconds):9.1f}"
            )


if __name__ == "__main__":
    main()
