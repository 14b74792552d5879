"""The OpenAI request and response shapes: a body read into a `Request`, a Posterior made into
a completion object.

Every field of a body is either used, accepted as the OpenAI API defines it, or refused with a
400 that names it (`APIError`): a constraint the server did not understand never turns into
unconstrained text. What a request means:

* The prompt: `messages` through the model's chat template (`/v1/chat/completions`), or
  `prompt` as it is (`/v1/completions`).
* The constraint: `response_format` (`{"type": "json_schema", "json_schema": {"schema": ...}}`
  or `{"type": "json_object"}`), or one of `structured_outputs`' `json`, `regex`, `grammar`
  (Lark) and `choice` (a list of strings). At most one.
* The run: `ppl.smc` (default), `ppl.importance` or `ppl.smc_steer` over `complete` (below),
  with the body's `ppl` object's `particles` (default 8), `method`, `seed` and `ess_threshold`;
  `seed` also at the top level. The `n` choices are drawn from the posterior by weight, with
  a generator seeded from the run's seed: the same request with the same seed gives the same
  answer.
* `max_tokens` (or `max_completion_tokens`), capped by the context window; `stop` (up to 4
  strings: the text ends before the first one). Without a constraint a particle that reaches
  `max_tokens` is kept (finish_reason "length"); with one it must finish, as only a finished
  text can satisfy it.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import ppl
from ppl.compiler import program
from ppl.primitives import condition, sample

METHODS = {"smc": ppl.smc, "importance": ppl.importance, "smc_steer": ppl.smc_steer}
DEFAULT_PARTICLES = 8
MAX_PARTICLES = 256
DEFAULT_MAX_TOKENS = 256
MAX_N = 64
MAX_TEMPERATURE = 2  # as in OpenAI's API

# fields of OpenAI's API that change what is generated and that this server does not do
UNSUPPORTED = {
    "top_p": "nucleus sampling changes the distribution the answers are drawn from",
    "logit_bias": "a logit bias changes the model",
    "logprobs": "per-token log probabilities are not returned",
    "top_logprobs": "per-token log probabilities are not returned",
    "presence_penalty": "penalties change the model",
    "frequency_penalty": "penalties change the model",
    "tools": "tool calls are not supported",
    "tool_choice": "tool calls are not supported",
    "functions": "function calls are not supported",
    "function_call": "function calls are not supported",
    "parallel_tool_calls": "tool calls are not supported",
    "audio": "audio is not supported",
    "modalities": "only text is supported",
    "prediction": "predicted outputs are not supported",
    "best_of": "best_of is not supported: use n, drawn from the posterior",
    "echo": "echo is not supported",
    "suffix": "suffix is not supported",
    "reasoning_effort": "reasoning options are not supported",
    "web_search_options": "web search is not supported",
}
# neutral values of unsupported fields: a client may send them and mean nothing by them
NEUTRAL = {
    "top_p": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "parallel_tool_calls": None,
    "best_of": 1,
    "echo": False,
}
# accepted and without effect on the answer
IGNORED = {"user", "store", "metadata", "service_tier", "stream_options"}
COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "n",
    "stream",
    "stop",
    "seed",
    "ppl",
    "response_format",
    "structured_outputs",
    "stream_options",
}
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens"}
COMPLETION_FIELDS = COMMON | {"prompt"}
PPL_FIELDS = {"particles", "method", "seed", "ess_threshold"}


class APIError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or _KINDS.get(status, "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "unprocessable_entity",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout",
}


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class Request:
    """What a completion request asks for, checked."""

    prompt: str
    constraint: Any
    constraint_kind: str | None
    max_tokens: int
    stop: list[str]
    n: int
    method: str
    particles: int
    seed: int | None
    ess_threshold: float | None
    stream: bool
    include_usage: bool
    chat: bool
    #: the model's temperature: the run samples `lm.tempered(temperature)`, conditioned
    temperature: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


def read_body(raw: bytes, limit: int) -> dict[str, Any]:
    if len(raw) > limit:
        raise APIError(413, f"the request body is {len(raw)} bytes; the limit is {limit}")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"the request body is not JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", code="invalid_json")
    return body


def parse(
    body: dict[str, Any], *, chat: bool, lm: Any, model_name: str, compiler: Any = None
) -> Request:
    """The `Request` a chat or completion body asks for; `APIError` (400) for anything wrong."""
    allowed = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for name, value in body.items():
        if name in UNSUPPORTED:
            if name in NEUTRAL and value == NEUTRAL[name]:
                continue
            raise bad(
                f"{name} is not supported by this server: {UNSUPPORTED[name]}",
                name,
                "unsupported_parameter",
            )
        if name not in allowed and name not in IGNORED:
            raise bad(
                f"unknown field {name!r}: this server does not know it, and does not "
                "ignore what it does not know",
                name,
                "unknown_parameter",
            )
    model = body.get("model")
    if model is not None and model != model_name:
        raise APIError(
            404,
            f"the model {model!r} is not served here; this server serves {model_name!r}",
            param="model",
            code="model_not_found",
        )
    prompt = _chat_prompt(body, lm) if chat else _completion_prompt(body)
    temperature = body.get("temperature")
    if temperature is None:
        temperature = 1.0
    elif not _is_number(temperature) or not 0 < temperature <= MAX_TEMPERATURE:
        hint = (
            ": 0 would be greedy decoding, which has no distribution to condition on the "
            "constraint; use a small temperature such as 0.1, or a seed for repeatable answers"
            if _is_number(temperature) and temperature == 0
            else ""
        )
        raise bad(
            f"temperature must be a number above 0 and at most {MAX_TEMPERATURE:g}, "
            f"got {temperature!r}{hint}",
            "temperature",
            "unsupported_value" if hint else None,
        )
    n = _whole(body.get("n", 1), "n", 1, MAX_N)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = DEFAULT_MAX_TOKENS if limit is None else _whole(limit, name, 1, 1 << 20)
    stop = _stop(body.get("stop"))
    options = body.get("ppl") or {}
    if not isinstance(options, dict):
        raise bad('ppl must be an object: {"particles", "method", "seed", "ess_threshold"}', "ppl")
    for key in options:
        if key not in PPL_FIELDS:
            raise bad(
                f"unknown field ppl.{key}: use {', '.join(sorted(PPL_FIELDS))}",
                f"ppl.{key}",
                "unknown_parameter",
            )
    method = options.get("method", "smc")
    if method not in METHODS:
        raise bad(f"ppl.method must be one of {', '.join(METHODS)}, got {method!r}", "ppl.method")
    particles = _whole(
        options.get("particles", DEFAULT_PARTICLES), "ppl.particles", 1, MAX_PARTICLES
    )
    seed = options.get("seed", body.get("seed"))
    if seed is not None:
        seed = _whole(seed, "seed", 0, (1 << 63) - 1)
    ess = options.get("ess_threshold")
    if ess is not None and (not _is_number(ess) or not 0 <= ess <= 1):
        raise bad(f"ppl.ess_threshold must be a number in [0, 1], got {ess!r}", "ppl.ess_threshold")
    if ess is not None and method == "importance":
        raise bad("ppl.ess_threshold is for smc and smc_steer", "ppl.ess_threshold")
    constraint, kind = _constraint(body, compiler)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad(f"stream must be true or false, got {stream!r}", "stream")
    stream_options = body.get("stream_options") or {}
    include_usage = bool(isinstance(stream_options, dict) and stream_options.get("include_usage"))
    return Request(
        prompt,
        constraint,
        kind,
        max_tokens,
        stop,
        n,
        method,
        particles,
        seed,
        ess,
        stream,
        include_usage,
        chat,
        float(temperature),
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _whole(x: Any, name: str, low: int, high: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not low <= x <= high:
        raise bad(f"{name} must be a whole number from {low} to {high}, got {x!r}", name)
    return x


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop must be a string or a list of up to 4 non-empty strings", "stop")
    if len(stops) > 4:
        raise bad(f"stop takes at most 4 strings, got {len(stops)}", "stop")
    return stops


def _chat_prompt(body: dict[str, Any], lm: Any) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad(f"{where} must be an object with a role and a content", where)
        if m["role"] not in ("system", "developer", "user", "assistant"):
            raise bad(
                f"{where}.role {m['role']!r} is not supported (system, developer, user, assistant)",
                f"{where}.role",
            )
        content = m.get("content")
        if isinstance(content, list):  # text parts only
            parts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise bad(
                        f"{where}.content[{j}]: only text parts are supported", f"{where}.content"
                    )
                parts.append(str(part.get("text", "")))
            content = "".join(parts)
        if not isinstance(content, str):
            raise bad(f"{where}.content must be a string", f"{where}.content")
        extra = set(m) - {"role", "content", "name"}
        if extra:
            raise bad(f"{where}: unknown field {sorted(extra)[0]!r}", where, "unknown_parameter")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": content})
    try:
        return lm.chat(out)
    except (ValueError, NotImplementedError) as e:
        raise bad(f"messages cannot be made into a prompt: {e}", "messages") from None


def _completion_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad("prompt must be a string (one prompt per request)", "prompt")
    return prompt


def _constraint(body: dict[str, Any], compiler: Any = None) -> tuple[Any, str | None]:
    """The one constraint a body gives, compiled (400 for two, or for one that is wrong)."""
    given: list[tuple[str, Any]] = []
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in (
            "text",
            "json_object",
            "json_schema",
        ):
            raise bad(
                "response_format.type must be text, json_object or json_schema", "response_format"
            )
        if fmt["type"] == "json_object":
            given.append(("response_format", ("json", {"type": "object"})))
        elif fmt["type"] == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or "schema" not in spec:
                raise bad(
                    "response_format.json_schema must be an object with a schema",
                    "response_format.json_schema",
                )
            extra = set(spec) - {"name", "schema", "strict", "description"}
            if extra:
                raise bad(
                    f"unknown field response_format.json_schema.{sorted(extra)[0]}",
                    "response_format.json_schema",
                    "unknown_parameter",
                )
            given.append(("response_format", ("json", spec["schema"])))
    outputs = body.get("structured_outputs")
    if outputs is not None:
        if not isinstance(outputs, dict):
            raise bad(
                "structured_outputs must be an object with one of json, regex, grammar or choice",
                "structured_outputs",
            )
        for key, value in outputs.items():
            if key not in ("json", "regex", "grammar", "choice"):
                raise bad(
                    f"unknown field structured_outputs.{key}: use one of json, regex, "
                    "grammar, choice",
                    f"structured_outputs.{key}",
                    "unknown_parameter",
                )
            given.append((f"structured_outputs.{key}", (key, value)))
    if len(given) > 1:
        raise bad(
            f"two constraints given ({given[0][0]} and {given[1][0]}): give one",
            given[1][0],
            "conflicting_constraints",
        )
    if not given:
        return None, None
    param, (kind, value) = given[0]
    try:
        return _compile(kind, value, param, compiler), kind
    except APIError:
        raise
    except (ValueError, TypeError) as e:
        raise bad(f"{param}: {e}", param, "invalid_constraint") from None


def _compile(kind: str, value: Any, param: str, compiler: Any = None) -> Any:
    """The constraint, compiled: first by `compiler` (`ppl.serve.compiling`: in a worker, under
    time and memory limits) when one is given, then here."""
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise bad(f"{param} is not a JSON schema: {e}", param) from None
        if not isinstance(value, (dict, bool)):
            raise bad(f"{param} must be a JSON schema (an object)", param)
        make = ppl.JSONSchema
    elif kind in ("regex", "grammar"):
        if not isinstance(value, str):
            what = "a regular expression" if kind == "regex" else "a Lark grammar"
            raise bad(f"{param} must be {what} (a string)", param)
        make = ppl.Regex if kind == "regex" else ppl.Grammar
    else:
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise bad(f"{param} must be a non-empty list of strings", param)
        literals = " | ".join(json.dumps(c, ensure_ascii=False) for c in dict.fromkeys(value))
        kind, value, make = "grammar", f"start: {literals}", ppl.Grammar
    if compiler is not None:
        from ppl.serve.compiling import CompileLimit

        try:
            error = compiler.check(kind, value)
        except CompileLimit as e:
            raise bad(f"{param}: {e}", param, "constraint_too_complex") from None
        if error is not None:
            raise bad(f"{param}: {error}", param, "invalid_constraint")
    return make(value)


# -- the run ----------------------------------------------------------------------------------


def _cut(text: str, stop: list[str]) -> str | None:
    """`text` up to the first stop string in it, or None when none is."""
    found = [text.index(s) for s in stop if s in text]
    return text[: min(found)] if found else None


@program
def complete(context, constraint, max_tokens, stop, keep_unfinished):
    """The text the model adds to `context` (under `constraint`), up to `max_tokens` tokens,
    EOS or a stop string: (text, finish reason, tokens)."""
    ctx = context
    for i in range(max_tokens):
        tok = sample(ctx.next_token(constraint))
        ctx = ctx + tok
        if tok.is_eos:
            return ctx.text, "stop", i + 1
        if stop:
            cut = _cut(ctx.text, stop)
            if cut is not None:
                return cut, "stop", i + 1
    # a run in which no particle finishes reports this line
    condition(keep_unfinished)  # max_tokens reached before the text was finished
    return ctx.text, "length", max_tokens


def job(request: Request, lm: Any) -> Any:
    """The engine's job for `request`: (Posterior, prompt tokens)."""

    def run() -> tuple[Any, int]:
        model = lm.tempered(request.temperature) if request.temperature != 1 else lm
        context = model.context(request.prompt)
        prompt_tokens = len(context.prompt_tokens)
        max_tokens = request.max_tokens
        if lm.max_length is not None:  # capped by the context window
            max_tokens = max(1, min(max_tokens, lm.max_length - prompt_tokens))
        options: dict[str, Any] = {
            "particles": request.particles,
            "progress": False,
            "record": False,
        }
        if request.ess_threshold is not None:
            options["ess_threshold"] = request.ess_threshold
        post = METHODS[request.method](
            complete,
            context,
            request.constraint,
            max_tokens,
            request.stop,
            request.constraint is None,
            seed=request.seed,
            **options,
        )
        return post, prompt_tokens

    return run


def choices(post: Any, n: int, seed: int | None) -> list[tuple[int, Any, float]]:
    """`n` particles drawn by weight: (particle, value, its normalised weight)."""
    w = np.asarray(post.weights, dtype=float)
    if not w.sum() > 0:
        raise APIError(
            422,
            f"no particle satisfied the constraint: {post.failure or 'every weight is zero'}",
            code="no_valid_answer",
        )
    seq = np.random.SeedSequence(
        seed if seed is not None else secrets.randbits(64), spawn_key=(0x73657276,)
    )
    picks = np.random.default_rng(seq).choice(len(w), size=n, p=w / w.sum())
    return [(int(i), post.values[int(i)], float(w[int(i)] / w.sum())) for i in picks]


def response(request: Request, post: Any, prompt_tokens: int, model_name: str) -> dict[str, Any]:
    """The completion object (OpenAI's, with a `ppl` object) for a finished run."""
    picked = choices(post, request.n, request.seed)
    made = int(time.time())
    out_choices = []
    completion_tokens = 0
    for index, (_, (text, reason, tokens), _) in enumerate(picked):
        completion_tokens += tokens
        if request.chat:
            out_choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": reason,
                    "logprobs": None,
                }
            )
        else:
            out_choices.append(
                {"index": index, "text": text, "finish_reason": reason, "logprobs": None}
            )
    prefix = "chatcmpl" if request.chat else "cmpl"
    return {
        "id": f"{prefix}-{secrets.token_hex(12)}",
        "object": "chat.completion" if request.chat else "text_completion",
        "created": made,
        "model": model_name,
        "choices": out_choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "ppl": ppl_object(request, post, picked),
    }


def ppl_object(request: Request, post: Any, picked: list[tuple[int, Any, float]]) -> dict:
    z = post.log_evidence
    return {
        "log_evidence": None if z is None or not math.isfinite(z) else float(z),
        "ess": float(post.final_ess),
        "particles": request.particles,
        "method": request.method,
        "seed": post.stats.get("seed") if isinstance(post.stats.get("seed"), int) else None,
        "weights": [weight for _, _, weight in picked],
        "tokens_fed": int(post.stats.get("tokens_fed", 0)),
        "forward_passes": int(post.stats.get("forward_calls", 0)),
        "constraint": request.constraint_kind,
        "temperature": request.temperature,
    }
