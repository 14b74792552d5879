"""The HTTP server: FastAPI routes over the engine (`ppl.serve.engine`) and the OpenAI shapes
(`ppl.serve.api`).

Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
`GET /v1/programs`, `POST /v1/programs/{name}`, `GET /health`.

* Every error is JSON in OpenAI's shape, never a traceback: the handlers raise `APIError`, and
  anything else is a 500 with the error's type and message (the traceback goes to the log).
* With an API key, every route but `/health` needs `Authorization: Bearer KEY` (401).
* A handler hands its job to the engine and waits; if the client goes away meanwhile, the run is
  cancelled within one step. A full queue is a 429 with Retry-After, a server shutting down a
  503, a run past the timeout a 504.
* `stream: true` answers with server-sent events: while the particles run, chunks with an empty
  delta and the run's progress in `ppl.progress`; then each choice's text in one chunk (the
  particles are only weighed, and so a text only chosen, when the run ends); then the
  finish_reason chunk, the usage chunk when asked for, and `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from ppl.compiler import Program
from ppl.serve import api
from ppl.serve.api import APIError
from ppl.serve.compiling import SECONDS, Compiler
from ppl.serve.engine import Busy, ClientGone, DeadlineExceeded, Draining, Engine

log = logging.getLogger("ppl.serve")
BODY_LIMIT = 1 << 20  # bytes
POLL = 0.05  # seconds between checks that the client is still there


def create_app(
    lm: Any,
    model_name: str,
    engine: Engine,
    programs: dict[str, Program] | None = None,
    *,
    api_key: str | None = None,
    body_limit: int = BODY_LIMIT,
    compile_seconds: float = SECONDS,
) -> Any:
    """The FastAPI application serving `lm` (as `model_name`) and `programs` on `engine`."""
    from ppl.serve.metrics import CONTENT_TYPE, Metrics

    app = FastAPI(title="ppl serve", docs_url=None, redoc_url=None, openapi_url=None)
    programs = dict(programs or {})
    metrics = Metrics(engine)
    compiler = Compiler(compile_seconds)
    compiler.start()
    app.state.compiler = compiler
    routes = {
        "/health",
        "/metrics",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/programs",
        *(f"/v1/programs/{name}" for name in programs),
    }

    def error_response(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, e: APIError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(APIError(400, f"the request is not valid: {e}", code="invalid"))

    @app.exception_handler(Exception)
    async def on_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("error in %s %s", request.method, request.url.path)
        return error_response(APIError(500, f"{type(e).__name__}: {e}", code="internal_error"))

    @app.exception_handler(404)
    async def on_not_found(request: Request, e: Exception) -> JSONResponse:
        return error_response(
            APIError(404, f"no route {request.method} {request.url.path}", code="not_found")
        )

    @app.exception_handler(405)
    async def on_method(request: Request, e: Exception) -> JSONResponse:
        return error_response(
            APIError(
                405,
                f"{request.method} is not allowed on {request.url.path}",
                code="method_not_allowed",
            )
        )

    app.add_middleware(
        _Guard, api_key=api_key, metrics=metrics, routes=routes, error_response=error_response
    )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "running": engine.running, "queued": engine.queued}

    @app.get("/metrics")
    async def scrape() -> Any:
        from fastapi.responses import Response

        return Response(metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "ppl"}],
        }

    async def completion(request: Request, chat: bool) -> Any:
        body = api.read_body(await request.body(), body_limit)
        parsed = await asyncio.to_thread(
            api.parse, body, chat=chat, lm=lm, model_name=model_name, compiler=compiler
        )
        request.state.detail = f"particles={parsed.particles} method={parsed.method}"
        ticket = _submit(engine, api.job(parsed, lm))
        if parsed.stream:
            return StreamingResponse(
                _stream(request, ticket, parsed, model_name), media_type="text/event-stream"
            )
        post, prompt_tokens = await _outcome(request, ticket)
        out = api.response(parsed, post, prompt_tokens, model_name)
        request.state.detail += f" fed={out['ppl']['tokens_fed']}"
        return out

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await completion(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await completion(request, chat=False)

    @app.get("/v1/programs")
    async def list_programs() -> dict[str, Any]:
        return {"object": "list", "data": [_describe(name, p) for name, p in programs.items()]}

    @app.post("/v1/programs/{name}")
    async def run_program(name: str, request: Request) -> Any:
        found = programs.get(name)
        if found is None:
            raise APIError(
                404,
                f"no program {name!r}: this server runs {', '.join(programs) or 'none'}",
                code="program_not_found",
            )
        body = api.read_body(await request.body(), body_limit)
        job = _program_job(found, body, lm)
        ticket = _submit(engine, job)
        post = await _outcome(request, ticket)
        try:
            return post.to_dict()
        except TypeError as e:  # a value JSON cannot hold
            raise APIError(
                422, f"the program's result cannot be sent as JSON: {e}", code="not_json"
            ) from None

    return app


class _Guard:
    """Around every request (plain ASGI, so that a handler still sees its client go away):
    the API key, the log line (number, method, path, status, ms, run) and the metrics."""

    def __init__(
        self, app: Any, *, api_key: str | None, metrics: Any, routes: set[str], error_response: Any
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.metrics = metrics
        self.routes = routes
        self.error_response = error_response
        self.counter = iter(range(1, 1 << 62))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        number = next(self.counter)
        start = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in self.routes else "other"  # a label per route, not per URL
        state = scope.setdefault("state", {})
        state["detail"] = ""
        status = [500]

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.api_key is not None and path != "/health":
                given = dict(scope["headers"]).get(b"authorization", b"")
                if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
                    error = APIError(
                        401,
                        "a valid API key is needed: Authorization: Bearer KEY",
                        code="invalid_api_key",
                    )
                    await self.error_response(error)(scope, receive, sending)
                    return
            await self.app(scope, receive, sending)
        finally:
            ms = (time.perf_counter() - start) * 1000
            log.info(
                "#%d %s %s %d %.0f ms %s",
                number,
                scope["method"],
                path,
                status[0],
                ms,
                state.get("detail", ""),
            )
            self.metrics.observe(endpoint, status[0], ms / 1000)


def _submit(engine: Engine, job: Any) -> Any:
    try:
        return engine.submit(job)
    except Busy as e:
        raise APIError(429, str(e), code="busy", headers={"Retry-After": "1"}) from None
    except Draining as e:
        raise APIError(503, str(e), code="shutting_down") from None


async def _outcome(request: Any, ticket: Any) -> Any:
    """The ticket's result; the run is cancelled if the client goes away first."""
    waiting = asyncio.wrap_future(ticket.future)
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=POLL)
        if done:
            break
        if await request.is_disconnected():
            ticket.cancel()
            break
    try:
        return await waiting
    except DeadlineExceeded as e:
        raise APIError(504, str(e), code="timeout") from None
    except ClientGone as e:
        raise APIError(499, str(e), code="client_gone") from None
    except APIError:
        raise
    except (ValueError, TypeError) as e:  # the run refused its input (a context too long...)
        raise APIError(400, f"{type(e).__name__}: {e}", code="invalid_request") from None


async def _stream(
    request: Any, ticket: Any, parsed: api.Request, model_name: str
) -> AsyncIterator[bytes]:
    """Server-sent events: progress while the run goes, then the answer (module docstring)."""
    ident = f"{'chatcmpl' if parsed.chat else 'cmpl'}-{secrets.token_hex(12)}"
    made = int(time.time())
    kind = "chat.completion.chunk" if parsed.chat else "text_completion"

    def chunk(choices: list[dict], **extra: Any) -> bytes:
        data = {
            "id": ident,
            "object": kind,
            "created": made,
            "model": model_name,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(data)}\n\n".encode()

    def empty(index: int = 0, reason: str | None = None) -> dict[str, Any]:
        if parsed.chat:
            return {"index": index, "delta": {}, "finish_reason": reason, "logprobs": None}
        return {"index": index, "text": "", "finish_reason": reason, "logprobs": None}

    waiting = asyncio.wrap_future(ticket.future)
    last = None
    if parsed.chat:
        yield chunk(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None,
                    "logprobs": None,
                }
            ]
        )
    while not waiting.done():
        await asyncio.wait({waiting}, timeout=0.25)
        if await request.is_disconnected():
            ticket.cancel()
            return
        if ticket.progress is not None and ticket.progress != last and not waiting.done():
            last = ticket.progress
            done, total, text = last
            yield chunk([empty()], ppl={"progress": {"done": done, "total": total, "status": text}})
    try:
        post, prompt_tokens = await waiting
        out = api.response(parsed, post, prompt_tokens, model_name)
    except Exception as e:
        error = e if isinstance(e, APIError) else _as_api_error(e)
        yield f"data: {json.dumps(error.body())}\n\n".encode()
        yield b"data: [DONE]\n\n"
        return
    for c in out["choices"]:
        text = c["message"]["content"] if parsed.chat else c["text"]
        part = (
            {
                "index": c["index"],
                "delta": {"content": text},
                "finish_reason": None,
                "logprobs": None,
            }
            if parsed.chat
            else {"index": c["index"], "text": text, "finish_reason": None, "logprobs": None}
        )
        yield chunk([part])
    for c in out["choices"]:
        yield chunk([empty(c["index"], c["finish_reason"])], ppl=out["ppl"])
    if parsed.include_usage:
        yield chunk([], usage=out["usage"])
    yield b"data: [DONE]\n\n"


def _as_api_error(e: BaseException) -> APIError:
    if isinstance(e, DeadlineExceeded):
        return APIError(504, str(e), code="timeout")
    if isinstance(e, (ValueError, TypeError)):
        return APIError(400, f"{type(e).__name__}: {e}", code="invalid_request")
    return APIError(500, f"{type(e).__name__}: {e}", code="internal_error")


def _describe(name: str, program: Program) -> dict[str, Any]:
    params = []
    for p in program.code.signature.parameters.values():
        entry: dict[str, Any] = {"name": p.name, "kind": p.kind.name.lower()}
        if p.default is not inspect.Parameter.empty:
            entry["default"] = p.default if _plain(p.default) else repr(p.default)
        if p.annotation is not inspect.Parameter.empty:
            entry["annotation"] = (
                p.annotation
                if isinstance(p.annotation, str)
                else getattr(p.annotation, "__name__", repr(p.annotation))
            )
        params.append(entry)
    doc = (program.__doc__ or "").strip().split("\n\n")[0]
    return {"id": name, "object": "program", "parameters": params, "description": doc}


def _plain(x: Any) -> bool:
    try:
        json.dumps(x)
        return True
    except (TypeError, ValueError):
        return False


PROGRAM_FIELDS = {"args", "kwargs", "method", "particles", "seed", "steps", "chains"}
PROGRAM_METHODS = {"smc", "importance", "smc_steer", "mh", "pimh", "pgibbs"}


def _program_job(program: Program, body: dict[str, Any], lm: Any) -> Any:
    import ppl
    from ppl.workloads.run import _bind_lm

    for key in body:
        if key not in PROGRAM_FIELDS:
            raise api.bad(
                f"unknown field {key!r}: use {', '.join(sorted(PROGRAM_FIELDS))}",
                key,
                "unknown_parameter",
            )
    args = body.get("args", [])
    kwargs = body.get("kwargs", {})
    if not isinstance(args, list):
        raise api.bad("args must be a list of the program's positional arguments", "args")
    if not isinstance(kwargs, dict):
        raise api.bad("kwargs must be an object of the program's keyword arguments", "kwargs")
    method_name = body.get("method", "smc")
    if method_name not in PROGRAM_METHODS:
        raise api.bad(
            f"method must be one of {', '.join(sorted(PROGRAM_METHODS))}, got {method_name!r}",
            "method",
        )
    method = getattr(ppl, method_name)
    options: dict[str, Any] = {"progress": False}
    params = inspect.signature(method).parameters
    for key in ("particles", "steps", "chains"):
        if key in body:
            if key not in params:
                raise api.bad(f"{key} is not an option of {method_name}", key)
            options[key] = api._whole(body[key], key, 1, 100_000)
    if "record" in params:
        options["record"] = False
    seed = body.get("seed")
    if seed is not None:
        seed = api._whole(seed, "seed", 0, (1 << 63) - 1)
    signature = program.code.signature
    try:
        if "lm" in signature.parameters and "lm" not in kwargs:
            # the served model is the program's `lm`; the arguments fill its other parameters
            args, kwargs = _bind_lm(program, tuple(args), kwargs)
            kwargs = {**kwargs, "lm": lm}
        signature.bind(*args, **kwargs)
    except TypeError as e:
        raise api.bad(f"the arguments do not fit {program.__qualname__}(): {e}", "args") from None

    def run() -> Any:
        return method(program, *args, seed=seed, **options, **kwargs)

    return run
