"""`ppl serve`: exact constrained generation, and programs, behind an OpenAI-compatible endpoint.

* `engine`: the one thread that owns the model and runs every request's run with shared steps.
* `api`: the OpenAI request and response shapes, and the program a completion runs.
* `app`: the FastAPI routes (the optional extra `serve`: fastapi, uvicorn, prometheus-client).

`serve(...)` starts it all and blocks; the command line is `ppl serve` (`ppl.cli`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["serve"]


def serve(
    lm: Any,
    model_name: str,
    *,
    programs: dict[str, Any] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_running: int = 16,
    max_queue: int = 64,
    rows: int | None = None,
    timeout: float | None = None,
    compile_seconds: float = 10.0,
    ready: Any = None,
) -> None:
    """Serve `lm` as `model_name` (and `programs`) until stopped; `ready(url)` is called once
    the server listens."""
    import threading
    import time

    import uvicorn

    from ppl.constraints.reference import jsonschema
    from ppl.serve.app import create_app
    from ppl.serve.engine import Engine

    # a server checks JSON against schemas: load the validator now (`ppl.lazy` defers it for
    # scripts that never use one), not while answering the first request
    jsonschema.validators  # noqa: B018

    engine = Engine(max_running=max_running, max_queue=max_queue, rows=rows, timeout=timeout)
    app = create_app(
        lm, model_name, engine, programs, api_key=api_key, compile_seconds=compile_seconds
    )

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = _Server(config, engine)

    def announce() -> None:  # once the socket listens, not before (uvicorn's startup is earlier)
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started and ready is not None:
            ready(f"http://{host}:{port}")

    threading.Thread(target=announce, name="ppl-serve-ready", daemon=True).start()
    try:
        server.run()
    finally:
        engine.drain(timeout=30)
        engine.close()
        app.state.compiler.close()


def _server_class() -> type:
    import signal
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, with SIGTERM draining the engine first: the requests running
        finish, new ones get 503 meanwhile, and then the server stops (exit status 0)."""

        def __init__(self, config: Any, engine: Any) -> None:
            super().__init__(config)
            self.engine = engine
            self.draining = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig != signal.SIGTERM:
                super().handle_exit(sig, frame)
                return
            if self.draining:
                return
            self.draining = True

            def drain() -> None:
                self.engine.drain()
                self.should_exit = True  # not recorded as a signal: the process exits 0

            threading.Thread(target=drain, name="ppl-serve-drain", daemon=True).start()

    return Server


def _Server(config: Any, engine: Any) -> Any:
    return _server_class()(config, engine)
