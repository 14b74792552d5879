"""ppl's JSON Schema support measured against the official JSON Schema Test Suite (draft 2020-12).

For every test group of the suite (a `schema` and its `tests`, each a `data` value and whether
it is `valid`):

* acceptance: does `ppl.JSONSchema(schema)` construct? The refusals are grouped by the start of
  their message, which names the keyword or feature refused;
* generation, for each accepted schema: SMC over `ppl.generate` on a toy character-level model
  (printable ASCII and EOS, mildly shaped toward closing strings and ending; so a schema that
  only admits non-ASCII text cannot finish), and every finished output checked by the
  `jsonschema` library (`Draft202012Validator` with its format checker, floats read as
  `decimal.Decimal`, integral numbers counted as integers). An invalid output is a text in
  ppl's language that the schema rejects: each one is printed with its schema. Also counted:
  groups where no particle finished within `--max-tokens`, time-outs (`--timeout` seconds per
  group, by SIGALRM: Unix only) and errors by type;
* agreement on the suite's own data, for each accepted schema: `c.matches(compact JSON of
  data)` against the suite's `valid`. "ppl valid, suite invalid" means ppl's language holds a
  document the schema rejects (serious); "ppl invalid, suite valid" is mostly expected, since
  the language holds each document in one spelling only (members in the schema's order,
  integers without fraction, `format` enforced: see docs/constraints.md).

The formats that `jsonschema` checks depend on the optional packages installed with it (its
`format` or `format-nongpl` extra); the summary lists the formats of accepted schemas it cannot
check. Patterns that Python's `re` cannot read (`\\p{Letter}`) are checked with the `regex`
package when it is installed; otherwise, and for outputs the validator fails on, the output is
counted as a validator error, not as invalid.

Get the suite from https://github.com/json-schema-org/JSON-Schema-Test-Suite: the JSON files at
the top of `tests/draft2020-12/` (not `optional/`). Run:

    python benchmarks/schema_suite.py SUITE_DIR [--particles 4] [--max-tokens 60]
        [--timeout 5] [--limit N] [--seed 0] [--json out.json] [--smoke]

where SUITE_DIR holds those files (e.g. a checkout's `tests/draft2020-12`).
"""

from __future__ import annotations

import argparse
import decimal
import json
import re
import signal
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import referencing
import torch
from _smoke import parse_args
from jsonschema import Draft202012Validator

import ppl
from ppl.models import FunctionLM

try:
    import regex as third_party_regex
except ImportError:  # then patterns that Python's `re` cannot read fail as validator errors
    third_party_regex = None

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

# -- the toy model: one character per token, the same distribution after every prefix -----------

VOCAB = ["<s>"] + [chr(c) for c in range(0x20, 0x7F)] + ["<eos>"]
SHAPE = {
    "<s>": 0.0,
    '"': 12.0,
    "{": 4.0,
    "[": 4.0,
    "}": 6.0,
    "]": 6.0,
    ",": 3.0,
    ":": 3.0,
    "<eos>": 20.0,
}
SHAPE.update({d: 2.0 for d in "0123456789"})
PROBS = torch.tensor([SHAPE.get(t, 1.0) for t in VOCAB], dtype=torch.float64)
PROBS /= PROBS.sum()


def toy_lm() -> FunctionLM:
    return FunctionLM(VOCAB, lambda prefix: PROBS, eos="<eos>", bos="<s>")


# -- the reference validator ----------------------------------------------------------------


def _is_number(checker: Any, x: Any) -> bool:
    return isinstance(x, (int, float, Decimal)) and not isinstance(x, bool)


def _is_integer(checker: Any, x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return True
    if isinstance(x, float):
        return x.is_integer()
    return isinstance(x, Decimal) and x.is_finite() and x == x.to_integral_value()


def _search(pattern: str, text: str) -> bool:
    """`re.search`, or the `regex` package's for what `re` cannot read (`\\p{Letter}`)."""
    try:
        return re.search(pattern, text) is not None
    except re.error:
        if third_party_regex is None:
            raise
        return third_party_regex.search(pattern, text) is not None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: dict, instance: Any, schema: Any) -> Iterator:
    if validator.is_type(instance, "object"):
        for pattern, subschema in patterns.items():
            for k, v in instance.items():
                if _search(pattern, k):
                    yield from validator.descend(v, subschema, path=k, schema_path=pattern)


Validator = jsonschema.validators.extend(
    Draft202012Validator,
    validators={"pattern": _pattern, "patternProperties": _pattern_properties},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"number": _is_number, "integer": _is_integer}
    ),
)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_decimal(text: str) -> Any:
    """`text` as JSON, floats as `Decimal` (NaN and Infinity refused, as JSON does)."""
    return json.loads(text, parse_float=Decimal, parse_constant=_no_constant)


def validator_for(schema_text: str) -> Any:
    """The reference validator of a schema (its numbers read as `Decimal`, so that `multipleOf`
    and the bounds compare exactly); no remote reference is fetched."""
    schema = load_decimal(schema_text)
    if isinstance(schema, dict) and schema.get("$schema") == DRAFT_2020_12:
        # without it, subschemas reached by `$ref` keep this validator class (and type checker)
        schema = {k: v for k, v in schema.items() if k != "$schema"}
    return Validator(
        schema,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
        registry=referencing.Registry(),
    )


def formats_in(schema: Any) -> set[str]:
    """The `format` values anywhere in a schema."""
    found: set[str] = set()
    if isinstance(schema, dict):
        if isinstance(schema.get("format"), str):
            found.add(schema["format"])
        for v in schema.values():
            found |= formats_in(v)
    elif isinstance(schema, list):
        for v in schema:
            found |= formats_in(v)
    return found


# -- time limit per group ---------------------------------------------------------------------


class GroupTimeout(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` on the way swallows
    it."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise GroupTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- refusal messages -----------------------------------------------------------------------

_HINT = re.compile(r" ?\(JSONSchema\(\.\.\., [^)]*\)[^()]*\)")


def refusal_reason(message: str, width: int = 60) -> str:
    """The start of a refusal message, with the words every message shares and the names that
    vary (URLs, regexes) left out, so that refusals of one keyword share a line."""
    message = message.removeprefix("JSONSchema: ")
    message = message.replace("not supported by the token-mask engine: ", "unsupported: ")
    message = message.replace("its language is empty (the schema is unsatisfiable)", "empty")
    message = _HINT.sub("", message)
    message = re.sub(r"'[^']*'", "'…'", message)
    message = re.sub(r"regexes /.*?/ and /.*?/", "regexes /…/ and /…/", message)
    return message[:width]


# -- one group --------------------------------------------------------------------------------


def compact(data: Any) -> str:
    """The compact JSON text of a value (characters written as themselves, as ppl writes them)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def run_group(group: dict[str, Any], lm: FunctionLM, args: argparse.Namespace, seed: int) -> dict:
    schema = group["schema"]
    schema_text = json.dumps(schema)
    out: dict[str, Any] = {"schema": schema_text}
    try:
        with time_limit(args.timeout):
            c = ppl.JSONSchema(schema)
    except GroupTimeout:
        out.update(accepted=False, refusal="(timed out constructing)")
        return out
    except Exception as e:
        out.update(accepted=False, refusal=str(e), refusal_type=type(e).__name__)
        return out
    out["accepted"] = True
    out["formats"] = sorted(formats_in(schema))

    # agreement on the suite's data
    disagreements = []
    for test in group["tests"]:
        text = compact(test["data"])
        try:
            with time_limit(args.timeout):
                ours = bool(c.matches(text))
        except GroupTimeout:
            disagreements.append({"data": text, "error": "timeout"})
            continue
        except Exception as e:
            disagreements.append({"data": text, "error": type(e).__name__})
            continue
        if ours != test["valid"]:
            disagreements.append(
                {"data": text, "ppl": ours, "suite": test["valid"], "test": test["description"]}
            )
    out["disagreements"] = disagreements
    out["data_tests"] = len(group["tests"])

    # generation, each finished output checked by the reference validator
    start = time.perf_counter()
    try:
        with time_limit(args.timeout), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            post = ppl.smc(
                ppl.generate,
                lm.context(""),
                constraint=c,
                max_tokens=args.max_tokens,
                particles=args.particles,
                seed=seed,
                progress=False,
            )
    except GroupTimeout:
        out.update(gen="timeout", seconds=time.perf_counter() - start)
        return out
    except Exception as e:
        out.update(gen="error", error=f"{type(e).__name__}: {e}", error_type=type(e).__name__)
        out["seconds"] = time.perf_counter() - start
        return out
    out["seconds"] = time.perf_counter() - start
    # "no particle finished" is counted below; other warnings (a mask leak, ...) are kept
    out["warnings"] = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if w.category.__name__ != "InferenceWarning"
    ]
    if post.diagnostics.get("mask_leaks"):
        out["mask_leaks"] = post.diagnostics["mask_leaks"]
    texts = [v for v, w in zip(post.values, post.weights) if w > 0 and v is not None]
    if not texts:
        out.update(gen="unfinished", failure=post.failure)
        return out
    out["gen"] = "ok"
    out["outputs"] = texts
    validator = validator_for(schema_text)
    invalid = []
    for text in dict.fromkeys(texts):
        try:
            value = load_decimal(text)
        except decimal.InvalidOperation:
            out.setdefault("validator_errors", []).append(
                {"text": text, "error": "a number outside decimal.Decimal's range"}
            )
            continue
        except ValueError as e:
            invalid.append({"text": text, "why": f"not JSON: {e}"})
            continue
        try:
            error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        except Exception as e:
            out.setdefault("validator_errors", []).append(
                {"text": text, "error": f"{type(e).__name__}: {e}"}
            )
            continue
        if error is not None:
            invalid.append({"text": text, "why": error.message})
    out["invalid"] = invalid
    out["invalid_count"] = sum(texts.count(d["text"]) for d in invalid)
    return out


# -- the whole suite --------------------------------------------------------------------------


def load_groups(suite: Path) -> list[tuple[str, dict]]:
    files = sorted(suite.glob("*.json"))
    if not files:
        raise SystemExit(f"no *.json files in {suite}: give the suite's tests/draft2020-12 folder")
    return [(f.stem, g) for f in files for g in json.loads(f.read_text())]


def shorten(text: str, width: int = 160) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path, help="the suite's tests/draft2020-12 folder")
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per group")
    parser.add_argument("--limit", type=int, default=None, help="only the first N groups")
    parser.add_argument("--seed", type=int, default=0, help="group i runs with seed + i")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parse_args(parser, particles=2, max_tokens=24, limit=4)

    groups = load_groups(args.suite)[: args.limit]
    lm = toy_lm()
    started = time.perf_counter()
    results = []
    for i, (file, group) in enumerate(groups):
        r = run_group(group, lm, args, args.seed + i)
        r.update(file=file, description=group["description"])
        results.append(r)
        for bad in r.get("invalid", ()):
            print(
                f"INVALID OUTPUT [{file}: {group['description']}]\n"
                f"  schema: {shorten(r['schema'], 300)}\n"
                f"  output: {bad['text']!r}\n  why:    {shorten(bad['why'])}",
                flush=True,
            )
        for w in r.get("warnings", ()):
            print(f"WARNING [{file}: {group['description']}] {shorten(w, 400)}", flush=True)
        if (i + 1) % 50 == 0:
            print(f"... {i + 1} / {len(groups)} groups", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    summary = summarise(results, elapsed, args)
    print_summary(summary, results)
    if args.json is not None:
        args.json.write_text(
            json.dumps({"summary": summary, "groups": results}, indent=1, default=str)
        )
        print(f"\nresults written to {args.json}")


def summarise(results: list[dict], elapsed: float, args: argparse.Namespace) -> dict[str, Any]:
    accepted = [r for r in results if r["accepted"]]
    refusals = Counter(
        refusal_reason(r["refusal"])
        if r.get("refusal_type", "ConstraintError") == "ConstraintError"
        else f"{r['refusal_type']}: {refusal_reason(r['refusal'])}"
        for r in results
        if not r["accepted"]
    )
    gen = Counter(r.get("gen") for r in accepted)
    errors = Counter(r["error_type"] for r in accepted if r.get("gen") == "error")
    outputs = sum(len(r.get("outputs", ())) for r in accepted)
    checked = set(Draft202012Validator.FORMAT_CHECKER.checkers)
    unchecked = sorted({f for r in accepted for f in r["formats"]} - checked)
    data = [d for r in accepted for d in r["disagreements"]]
    return {
        "groups": len(results),
        "accepted": len(accepted),
        "refusals": dict(refusals.most_common()),
        "outputs": outputs,
        "distinct_outputs": sum(len(set(r.get("outputs", ()))) for r in accepted),
        "invalid_outputs": sum(r.get("invalid_count", 0) for r in accepted),
        "invalid_distinct": sum(len(r.get("invalid", ())) for r in accepted),
        "groups_with_invalid": sum(1 for r in accepted if r.get("invalid")),
        "groups_generated": gen["ok"],
        "groups_unfinished": gen["unfinished"],
        "groups_timed_out": gen["timeout"],
        "groups_errors": dict(errors),
        "validator_errors": sum(len(r.get("validator_errors", ())) for r in accepted),
        "groups_with_warnings": sum(1 for r in accepted if r.get("warnings")),
        "groups_with_mask_leaks": sum(1 for r in accepted if r.get("mask_leaks")),
        "formats_not_checked": unchecked,
        "data_tests": sum(r["data_tests"] for r in accepted),
        "data_ppl_valid_suite_invalid": sum(1 for d in data if d.get("ppl") is True),
        "data_ppl_invalid_suite_valid": sum(1 for d in data if d.get("ppl") is False),
        "data_errors": sum(1 for d in data if "error" in d),
        "generation_seconds": sum(r.get("seconds", 0.0) for r in accepted),
        "seconds": elapsed,
        "settings": {
            "particles": args.particles,
            "max_tokens": args.max_tokens,
            "timeout": args.timeout,
            "seed": args.seed,
            "limit": args.limit,
        },
    }


def print_summary(s: dict[str, Any], results: list[dict]) -> None:
    accepted = [r for r in results if r["accepted"]]
    print("\n== refusals (start of the message) ==")
    width = max((len(k) for k in s["refusals"]), default=0)
    for reason, n in s["refusals"].items():
        print(f"  {reason:<{width}}  {n:>3}")
    print("\n== data disagreements, ppl valid where the suite says invalid ==")
    for r in accepted:
        for d in r["disagreements"]:
            if d.get("ppl") is True:
                print(f"  [{r['file']}: {r['description']}] {shorten(d['data'], 80)}")
                print(f"      schema: {shorten(r['schema'], 200)}")
    print("\n== summary ==")
    print(f"accepted {s['accepted']} / {s['groups']} schemas")
    print(
        f"outputs {s['outputs']} ({s['distinct_outputs']} distinct), invalid "
        f"{s['invalid_outputs']} ({s['invalid_distinct']} distinct, in "
        f"{s['groups_with_invalid']} groups); generated in {s['groups_generated']} groups, "
        f"no particle finished in {s['groups_unfinished']}, timed out in "
        f"{s['groups_timed_out']}, errors {s['groups_errors'] or 0}"
    )
    if s["groups_with_warnings"] or s["groups_with_mask_leaks"]:
        print(
            f"groups with warnings in generation: {s['groups_with_warnings']}, with mask leaks "
            f"in Posterior.diagnostics: {s['groups_with_mask_leaks']}"
        )
    if s["validator_errors"]:
        print(f"outputs the reference validator failed on: {s['validator_errors']}")
    if s["formats_not_checked"]:
        print(f"formats the validator cannot check here: {', '.join(s['formats_not_checked'])}")
    print(
        f"data agreement on {s['data_tests']} tests of accepted schemas: ppl valid / suite "
        f"invalid {s['data_ppl_valid_suite_invalid']}, ppl invalid / suite valid "
        f"{s['data_ppl_invalid_suite_valid']}, errors {s['data_errors']}"
    )
    print(
        f"time {s['seconds']:.1f} s ({s['generation_seconds']:.1f} s generating); "
        f"settings {s['settings']}"
    )


if __name__ == "__main__":
    main()
