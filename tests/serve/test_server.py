"""`ppl serve` through the official `openai` client, against a server in a subprocess (loopback).

The server runs a toy character model (tests/serve/toyserver.py), so each request takes
milliseconds and the tests check the behaviour, not the model.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {
    "type": "object",
    "properties": {"a": {"enum": [1, 22, 333]}, "b": {"type": "boolean"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
HI = [{"role": "user", "content": "hi"}]


class Reply:
    """What a plain HTTP call got back: status, headers and the JSON body."""

    def __init__(self, status: int, headers: dict, body: bytes) -> None:
        self.status_code = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def json(self):
        return json.loads(self.body)


def call(url: str, body: dict | None = None, timeout: float = 60) -> Reply:
    """GET `url`, or POST `body` to it as JSON, with the standard library alone."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return Reply(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        with e:  # it holds the response's socket: closed here, not when collected
            return Reply(e.code, dict(e.headers), e.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A toy server in a subprocess: started, waited for, stopped."""

    def __init__(self, *options: str) -> None:
        self.port = free_port()
        self.log = tempfile.TemporaryFile("w+")  # its log: a pipe nobody reads would fill up
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.serve.toyserver", str(self.port), *options],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + 90
        line = self.proc.stdout.readline()
        while "ready" not in line:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start: {self.stop()[-2000:]}")
            line = self.proc.stdout.readline()
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs):
        settings = {"api_key": "none", "max_retries": 0, "timeout": 60, **kwargs}
        return openai.OpenAI(base_url=f"{self.url}/v1", **settings)

    def stop(self) -> str:
        """Stop the server (once); its log."""
        if self.log.closed:
            return ""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.stdout.close()
        self.log.seek(0)
        err = self.log.read()
        self.log.close()
        return err


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


def test_models_lists_the_served_model(server):
    assert [m.id for m in server.client().models.list()] == ["toy"]


def test_json_schema_answers_are_valid_and_carry_the_evidence(server):
    out = server.client().chat.completions.create(
        model="toy",
        messages=HI,
        max_tokens=24,
        n=4,
        seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "ab", "schema": SCHEMA}},
    )
    assert len(out.choices) == 4
    for choice in out.choices:
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
        assert choice.finish_reason == "stop"
    extra = out.model_extra["ppl"]
    assert extra["log_evidence"] < 0 and extra["constraint"] == "json"
    assert extra["particles"] == 8 and len(extra["weights"]) == 4
    assert extra["tokens_fed"] > 0 and extra["forward_passes"] > 0
    assert out.usage.prompt_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


@pytest.mark.parametrize(
    "outputs,check",
    [
        ({"regex": "[a-c]{3}x"}, lambda t: len(t) == 4 and t[:3] in {a + b + c for a in "abc"
                                                                   for b in "abc" for c in "abc"}
         and t[3] == "x"),
        ({"grammar": 'start: "yes" | "no" | "maybe"'}, lambda t: t in ("yes", "no", "maybe")),
        ({"choice": ["red", "green", "blue"]}, lambda t: t in ("red", "green", "blue")),
        ({"json": SCHEMA}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) is None),
    ],
)  # fmt: skip
def test_structured_outputs_constrain_the_answer(server, outputs, check):
    out = server.client().chat.completions.create(
        model="toy", messages=HI, max_tokens=40, n=3, seed=1,
        extra_body={"structured_outputs": outputs},
    )  # fmt: skip
    for choice in out.choices:
        assert check(choice.message.content), choice.message.content


def test_the_same_seed_gives_the_same_answer(server):
    client = server.client()
    ask = dict(model="toy", messages=HI, max_tokens=12, n=2, extra_body={"ppl": {"seed": 7}})
    first = [c.message.content for c in client.chat.completions.create(**ask).choices]
    again = [c.message.content for c in client.chat.completions.create(**ask).choices]
    assert first == again


def test_completions_and_the_run_options(server):
    out = server.client().completions.create(
        model="toy", prompt="ab", max_tokens=6, seed=2, stop=["z"],
        extra_body={"ppl": {"particles": 4, "method": "importance"}},
    )  # fmt: skip
    assert out.object == "text_completion" and "z" not in out.choices[0].text
    assert out.model_extra["ppl"]["particles"] == 4
    assert out.model_extra["ppl"]["method"] == "importance"


@pytest.mark.parametrize("temperature", [1, 0.5, 1.7])
def test_temperature_samples_the_tempered_model_conditioned_on_the_constraint(server, temperature):
    # the toy model's next token does not depend on the prefix, and every letter has the same
    # weight: each particle of "[a-c]{3}x" carries the same weight, so the run's evidence is
    # exact: 27 texts, each p_T(letter)^4 p_T(EOS), with p_T proportional to weight^(1/T)
    from tests.serve import toyserver

    w = np.array(toyserver.WEIGHTS)
    q = np.where(w > 0, w, 0.0) ** (1 / temperature)
    q /= q.sum()
    letter, eos = q[1 + toyserver.CHARS.index("a")], q[-1]
    exact = math.log(27 * letter**4 * eos)
    out = server.client().chat.completions.create(
        model="toy", messages=HI, max_tokens=8, temperature=temperature,
        extra_body={"structured_outputs": {"regex": "[a-c]{3}x"}, "ppl": {"seed": 0}},
    )  # fmt: skip
    extra = out.model_extra["ppl"]
    assert extra["temperature"] == temperature
    assert extra["log_evidence"] == pytest.approx(exact, abs=1e-4)
    assert out.choices[0].message.content[3:] == "x"


def test_streaming_gives_the_answer_of_the_same_request_unstreamed(server):
    client = server.client()
    ask = dict(model="toy", messages=HI, max_tokens=10, seed=5,
               extra_body={"structured_outputs": {"regex": "[ab]+"}})  # fmt: skip
    whole = client.chat.completions.create(**ask).choices[0].message.content
    stream = client.chat.completions.create(
        **ask, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize(
    "ask,param,message",
    [
        ({"top_p": 0.5}, "top_p", "top_p is not supported"),
        ({"extra_body": {"guided_json": {}}}, "guided_json", "unknown field 'guided_json'"),
        ({"response_format": {"type": "json_object"},
          "extra_body": {"structured_outputs": {"regex": "a"}}},
         "structured_outputs.regex", "two constraints given"),
        ({"extra_body": {"structured_outputs": {"json": {"type": "nonsense"}}}},
         "structured_outputs.json", "structured_outputs.json"),
        ({"temperature": 0}, "temperature", "0 would be greedy decoding"),
        ({"temperature": 2.5}, "temperature", "at most 2"),
        ({"extra_body": {"ppl": {"particle": 4}}}, "ppl.particle", "unknown field ppl.particle"),
        ({"n": 0}, "n", "n must be a whole number"),
    ],
)  # fmt: skip
def test_what_the_server_does_not_do_is_a_400_naming_the_field(server, ask, param, message):
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().chat.completions.create(model="toy", messages=HI, max_tokens=4, **ask)
    error = caught.value.body
    assert error["param"] == param and message in error["message"], error


def test_no_valid_answer_is_a_422_with_the_reason(server):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        server.client().chat.completions.create(
            model="toy", messages=HI, max_tokens=3,
            extra_body={"structured_outputs": {"regex": "[a-z]{20}"}},  # 3 tokens hold 15 at most
        )  # fmt: skip
    assert "no particle satisfied the constraint" in caught.value.body["message"]


def test_another_model_name_is_a_404(server):
    with pytest.raises(openai.NotFoundError, match="not served here"):
        server.client().chat.completions.create(model="gpt-4o", messages=HI)


def test_programs_are_listed_and_run(server):
    listed = call(f"{server.url}/v1/programs").json()["data"]
    assert [p["id"] for p in listed] == ["coin", "echo"]
    assert listed[0]["parameters"][0] == {"name": "flips", "kind": "positional_or_keyword",
                                          "default": 3, "annotation": "int"}  # fmt: skip
    body = {"kwargs": {"flips": 2}, "particles": 16, "seed": 0}
    post = call(f"{server.url}/v1/programs/coin", body).json()
    assert post.get("format") == "ppl.posterior" and len(post["values"]) == 16, post
    again = call(f"{server.url}/v1/programs/coin", body).json()
    assert again["values"] == post["values"]
    echoed = call(f"{server.url}/v1/programs/echo", {"args": ["abc"], "particles": 2}).json()
    assert echoed.get("values") == [4, 4], echoed  # <s> a b c
    wrong = call(f"{server.url}/v1/programs/coin", {"args": [1, 2]})
    assert wrong.status_code == 400 and "do not fit coin()" in wrong.json()["error"]["message"]
    missing = call(f"{server.url}/v1/programs/nope", {})
    assert missing.status_code == 404


def test_a_full_queue_is_a_429_with_retry_after():
    s = Server("--max-running", "1", "--max-queue", "0", "--delay", "0.05")
    try:
        ask = {"model": "toy", "messages": HI, "max_tokens": 60}  # 3 s of 0.05 s steps
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            first = pool.submit(call, f"{s.url}/v1/chat/completions", ask)
            # the others are sent once the first runs (not at once: on a busy machine the first
            # could finish before the others arrive)
            deadline = time.monotonic() + 30
            while call(f"{s.url}/health").json()["running"] < 1:
                assert time.monotonic() < deadline and not first.done(), "the first never ran"
                time.sleep(0.02)
            others = list(pool.map(lambda _: call(f"{s.url}/v1/chat/completions", ask), range(3)))
            replies = [first.result(), *others]
        codes = [r.status_code for r in replies]
        assert codes == [200, 429, 429, 429], codes
        busy = next(r for r in replies if r.status_code == 429)
        assert busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "busy"
    finally:
        s.stop()


def test_a_run_past_the_timeout_is_a_504():
    s = Server("--timeout", "0.3", "--delay", "0.05")
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            s.client().chat.completions.create(model="toy", messages=HI, max_tokens=100)
        assert caught.value.status_code == 504
        assert "timeout of 0.3 s" in caught.value.body["message"]
        # the server goes on
        assert s.client().chat.completions.create(model="toy", messages=HI, max_tokens=2)
    finally:
        s.stop()


def test_an_api_key_is_required_when_given():
    s = Server("--api-key", "sesame")
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        assert [m.id for m in s.client(api_key="sesame").models.list()] == ["toy"]
        assert call(f"{s.url}/health").json()["status"] == "ok"
    finally:
        s.stop()


@pytest.mark.slow
def test_ppl_serve_on_the_embedded_model_answers_the_openai_client(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ppl.cli", "serve", "--port", str(port)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
    try:
        line = proc.stdout.readline()  # printed once the socket listens
        assert f"ready at http://127.0.0.1:{port}/v1" in line, log.read_text()[-2000:]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none",
                               max_retries=0, timeout=300)  # fmt: skip
        schema = {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 12},
                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
            "required": ["name", "age"],
            "additionalProperties": False,
        }  # fmt: skip
        out = client.chat.completions.create(
            model="embedded",
            messages=[{"role": "user", "content": "Invent a person. Answer in JSON."}],
            max_tokens=48, n=2, seed=0,
            response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
            extra_body={"ppl": {"particles": 4}},
        )  # fmt: skip
        for choice in out.choices:
            jsonschema.validate(json.loads(choice.message.content), schema)
        assert out.model_extra["ppl"]["log_evidence"] < 0
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        proc.stdout.close()
    logged = log.read_text()
    assert "POST /v1/chat/completions 200" in logged, logged[-2000:]


def test_a_client_that_goes_away_cancels_its_run():
    s = Server("--delay", "0.02")
    try:
        client = s.client(timeout=0.5)
        long = {"ppl": {"particles": 2}, "structured_outputs": {"regex": "[a-z]{300}"}}
        # a first constrained request waits for the compile workers to start
        warm = {"structured_outputs": {"regex": "a"}}
        s.client().chat.completions.create(model="toy", messages=HI, max_tokens=2, extra_body=warm)
        with pytest.raises(openai.APITimeoutError):  # 300 steps of 20 ms: 6 s of work
            client.chat.completions.create(model="toy", messages=HI, max_tokens=400,
                                           extra_body=long)  # fmt: skip
        deadline = time.monotonic() + 5
        while call(f"{s.url}/health").json()["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert call(f"{s.url}/health").json() == {"status": "ok", "running": 0, "queued": 0}
        scraped = call(f"{s.url}/metrics").body.decode()
        assert 'ppl_runs_cancelled_total{reason="client_gone"} 1.0' in scraped
        assert "ppl_runs_in_flight 0.0" in scraped
    finally:
        s.stop()


def test_metrics_count_requests_passes_and_rows(server):
    client = server.client()
    client.chat.completions.create(model="toy", messages=HI, max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="toy", messages=HI, top_p=0.1)
    call(f"{server.url}/no/such/page")
    scraped = call(f"{server.url}/metrics").body.decode()
    lines = dict(line.rsplit(" ", 1) for line in scraped.splitlines() if line[:1] != "#")
    assert float(lines['ppl_requests_total{endpoint="/v1/chat/completions",status="200"}']) >= 1
    assert float(lines['ppl_requests_total{endpoint="/v1/chat/completions",status="400"}']) >= 1
    assert float(lines['ppl_requests_total{endpoint="other",status="404"}']) >= 1
    assert float(lines["ppl_tokens_fed_total"]) > 0 and float(lines["ppl_forward_passes_total"]) > 0
    passes = float(lines["ppl_rows_per_pass_count"])
    assert passes == float(lines["ppl_forward_passes_total"])
    assert float(lines["ppl_queue_depth"]) == 0
    assert 'ppl_request_seconds_bucket{endpoint="/v1/chat/completions",le="+Inf"}' in lines


def test_sigterm_drains_the_running_requests_then_exits_0():
    s = Server("--delay", "0.01")
    try:
        long = {
            "messages": HI,
            "max_tokens": 90,
            "ppl": {"particles": 2},
            "structured_outputs": {"regex": "[a-z]{80}"},
        }  # 80 steps of 10 ms or more
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(call, f"{s.url}/v1/chat/completions", long)
            deadline = time.monotonic() + 10
            while not call(f"{s.url}/health").json()["running"]:
                assert time.monotonic() < deadline, "the request never ran"
                time.sleep(0.02)
            s.proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            refused = call(f"{s.url}/v1/chat/completions", {"messages": HI, "max_tokens": 2})
            assert refused.status_code == 503, refused.body
            assert refused.json()["error"]["code"] == "shutting_down"
            finished = running.result(timeout=60)
        assert finished.status_code == 200 and len(
            finished.json()["choices"][0]["message"]["content"]) == 80  # fmt: skip
        assert s.proc.wait(timeout=30) == 0
    finally:
        s.stop()


def test_a_constraint_that_compiles_too_slowly_is_a_400_and_the_server_goes_on():
    s = Server("--compile-seconds", "1")
    try:
        slow = "start: " + " ".join(f'"x{i}"?' for i in range(3000))  # seconds to load
        client = s.client()
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="toy", messages=HI, max_tokens=4,
                extra_body={"structured_outputs": {"grammar": slow}},
            )  # fmt: skip
        error = caught.value.body
        assert error["code"] == "constraint_too_complex", error
        assert "did not compile within 1 s" in error["message"]
        out = client.chat.completions.create(
            model="toy", messages=HI, max_tokens=4,
            extra_body={"structured_outputs": {"regex": "ab"}},
        )  # fmt: skip
        assert out.choices[0].message.content == "ab"
    finally:
        s.stop()


def rss(pid: int) -> int:
    """The resident memory of process `pid`, in bytes (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc for the memory")
def test_200_requests_from_32_clients_are_each_answered_once_and_memory_stays_flat():
    """After a warm-up of 100 requests (the allocators reach their working size: measured,
    the server's memory rises over the first ~150 requests and then stays within a few MiB
    over 600), 200 more: each answered once, and the memory flat from the 50th on."""
    s = Server("--max-running", "16", "--max-queue", "64")
    try:
        schema = {"name": "ab", "schema": SCHEMA}
        memory: dict[int, int] = {}
        lock = threading.Lock()
        done = [0]

        def ask(i: int) -> tuple[int, int, str, str]:
            body = {"model": "toy", "messages": [{"role": "user", "content": f"request {i}"}],
                    "max_tokens": 24, "seed": i, "n": 1,
                    "response_format": {"type": "json_schema", "json_schema": schema}}  # fmt: skip
            reply = call(f"{s.url}/v1/chat/completions", body, timeout=120)
            with lock:
                done[0] += 1
                if done[0] in (50, 200):
                    memory[done[0]] = rss(s.proc.pid)
            data = reply.json()
            if reply.status_code == 200:
                return i, 200, data["id"], data["choices"][0]["message"]["content"]
            return i, reply.status_code, data["error"]["code"], data["error"]["message"]

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            list(pool.map(ask, range(1000, 1100)))  # the warm-up
            done[0] = 0
            replies = list(pool.map(ask, range(200)))
        assert sorted(i for i, *_ in replies) == list(range(200)), "each request answered once"
        ok = [r for r in replies if r[1] == 200]
        assert len({r[2] for r in ok}) == len(ok), "no answer given twice"
        for _, status, code, text in replies:
            if status == 200:
                jsonschema.validate(json.loads(text), SCHEMA)
            else:  # an explicit error: a constraint nobody could meet in 24 tokens
                assert status == 422 and code == "no_valid_answer", (status, code, text)
        assert len(ok) >= 180, f"only {len(ok)} of 200 answered with a text"
        grew = memory[200] - memory[50]
        assert grew < 16 << 20, f"the server grew by {grew >> 20} MiB from request 50 to 200"
        scraped = call(f"{s.url}/metrics").body.decode()
        assert 'ppl_requests_total{endpoint="/v1/chat/completions",status="200"} ' in scraped
    finally:
        s.stop()
