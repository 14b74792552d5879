"""`ppl serve` under load: JSON-schema requests at concurrency 1, 8 and 32, on the embedded model.

Starts `ppl serve` (the embedded model) in a subprocess on a free loopback port, then for each
concurrency C sends `--requests` chat requests (each its own seed, so each its own run: SMC with
8 particles, at most 48 tokens, a JSON schema) from C client threads at once, and reports:

* requests per second, p50 and p95 latency (seconds, from sending to the whole answer);
* forward passes per request: the server's passes (`/metrics`, the difference over the round)
  divided by the requests, and the tokens the runs fed, all together (`/metrics`) against the sum
  of what each run reports feeding (`ppl.tokens_fed`, each shared row counted once, for the first
  run that needed it). Requests in flight share every forward pass, so passes per request fall
  with C while the tokens fed stay what the runs would feed alone (minus the prompt rows they
  share);
* the ratio of requests per second at the highest concurrency to concurrency 1 (target: >= 4).

Every answer is checked against the schema with `jsonschema`; a 422 (no particle finished
within 48 tokens) counts as answered, and is reported.

Run alone (the 2 cores are the server's): `python benchmarks/serve_load.py [--requests 32]
[--concurrency 1 8 32] [--max-tokens 48] [--model embedded|hf:NAME] [--smoke]` (`--smoke`: a
tiny random Llama written to a temporary folder and served as `hf:FOLDER`, 2 requests at
concurrency 1 and 2, at most 16 tokens).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
from _smoke import parse_args, save_tiny_hf

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=60) as r:
        text = r.read().decode()
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    }


def one(url: str, seed: int, model: str, max_tokens: int) -> tuple[float, int, int, str]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Invent a person. Answer in JSON."}],
        "max_tokens": max_tokens,
        "seed": seed,
        "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}},
        "ppl": {"particles": 8},
    }
    start = time.perf_counter()
    status, data = post(f"{url}/v1/chat/completions", body)
    seconds = time.perf_counter() - start
    if status == 200:
        jsonschema.validate(json.loads(data["choices"][0]["message"]["content"]), SCHEMA)
        return seconds, status, data["ppl"]["tokens_fed"], ""
    return seconds, status, 0, data["error"]["code"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--model", default="embedded", help="embedded or hf:NAME")
    args = parse_args(parser, requests=2, concurrency=[1, 2], max_tokens=16)
    with tempfile.TemporaryDirectory(prefix="ppl_smoke_") as folder:
        if args.smoke:
            args.model = f"hf:{save_tiny_hf(folder)}"
        measure(args)


def measure(args: argparse.Namespace) -> None:
    """Serve `args.model` and measure it at each concurrency of `args`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "ppl.cli", "serve", "--port", str(port), "--max-running", "32",
         "--model", args.model],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        line = server.stdout.readline()
        if "ready" not in line:
            raise SystemExit(f"the server did not start: {line!r}")
        url = f"http://127.0.0.1:{port}"
        # warm-up: the first constrained request starts the compile workers
        one(url, 10**6, args.model, args.max_tokens)
        rows = []
        seed = 0
        for c in args.concurrency:
            before = scrape(url)
            seeds = range(seed, seed + args.requests)
            seed += args.requests
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(c) as pool:
                results = list(pool.map(lambda s: one(url, s, args.model, args.max_tokens), seeds))
            wall = time.perf_counter() - start
            after = scrape(url)
            latencies = sorted(r[0] for r in results)
            passes = after["ppl_forward_passes_total"] - before["ppl_forward_passes_total"]
            fed = after["ppl_tokens_fed_total"] - before["ppl_tokens_fed_total"]
            rows.append({
                "concurrency": c,
                "requests_per_s": args.requests / wall,
                "p50_s": statistics.median(latencies),
                "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
                "passes_per_request": passes / args.requests,
                "tokens_fed": int(fed),
                "tokens_fed_by_runs": sum(r[2] for r in results),
                "unanswered": sum(r[1] != 200 for r in results),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        print()
        print("| concurrency | req/s | p50 s | p95 s | passes/request | tokens fed (server) "
              "| tokens fed (runs' own) | 422s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['concurrency']} | {r['requests_per_s']:.2f} | {r['p50_s']:.2f} "
                  f"| {r['p95_s']:.2f} | {r['passes_per_request']:.1f} | {r['tokens_fed']} "
                  f"| {r['tokens_fed_by_runs']} | {r['unanswered']} |")  # fmt: skip
        ratio = rows[-1]["requests_per_s"] / rows[0]["requests_per_s"]
        print(f"\nrequests per second at concurrency {rows[-1]['concurrency']} / at "
              f"{rows[0]['concurrency']}: {ratio:.2f}x (target >= 4)")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
