"""The `ppl` command: run a program over many inputs from the shell, a thin layer over `ppl.map`.

    ppl run FILE.py:PROGRAM [--method smc] [--particles N] [--arg NAME=VALUE ...]
            [--inputs inputs.jsonl] [--out results.jsonl] [--html run.html] [--model embedded]
    ppl demo [--particles N] [--max-tokens T] [--seed S]
    ppl --version

What it promises, and where each part happens:

* `ppl run` is one call `ppl.map(method, program, items, seed=--seed, checkpoint=--out,
  model=--model, **method options)` (`run`): item `i` is the same run, seed for seed, as
  `method(program, seed=(seed, i), **options, **item_i)` made in Python.
* An item is the `--arg` values updated by one line of `--inputs` (`items`): a line wins over
  `--arg`. Without `--inputs` the `--arg` values are the one item. Each value is checked, before
  anything loads, against its parameter's annotation (or its default's type): `--arg
  max_tokens=twenty` for `max_tokens: int` is a mistake in the command, named.
* FILE is loaded as a module under a private name (`load_file`), so its `if __name__ ==
  "__main__":` block does not run; its directory goes on `sys.path` for its own imports.
* Exit status: 0 when every item ran; 1 when some item raised (each is printed with its error
  line; `--out` keeps its traceback) or the run itself failed (a model that cannot load, all
  Ray workers lost, a fault of ppl's: printed with its traceback and the model it concerns);
  2 when the command could not start: a usage mistake, a FILE that does not load, a missing
  PROGRAM, a bad `--arg` or input line, or options, a model name or a checkpoint that
  `ppl.map` refuses before anything runs. Mistakes are one message on stderr, not a traceback
  of ppl; an exception raised while FILE loads shows the traceback of FILE's own lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import re
import sys
import textwrap
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import ppl
from ppl.compiler import Program
from ppl.inference.notices import InferenceWarning
from ppl.inference.posterior import Posterior
from ppl.inference.serialize import SaveError
from ppl.workloads import ItemError, Results

METHODS: dict[str, Callable[..., Posterior]] = {
    "smc": ppl.smc,
    "importance": ppl.importance,
    "smc_steer": ppl.smc_steer,
    "mh": ppl.mh,
    "pimh": ppl.pimh,
    "pgibbs": ppl.pgibbs,
}
DEMO = Path(ppl.__file__).resolve().parents[1] / "tutorials" / "short_words.py"
TOP = 3  # values shown per item
VALUE_CHARS = 240  # a value's text is cut here
WIDTH = 88


class UsageError(Exception):
    """A mistake in the command (FILE, PROGRAM, --arg, --inputs, options): exit status 2."""


class RunError(Exception):
    """An error while the run ran (a model that cannot load, a fault of ppl's): exit status 1,
    reported with its traceback."""

    def __init__(self, error: BaseException, *, traceback: bool = True, hint: str = "") -> None:
        notes = "".join(f" ({note})" for note in getattr(error, "__notes__", ()))
        super().__init__(f"{type(error).__name__}: {error}{notes}{hint}")
        self.error = error
        self.traceback = traceback


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `ppl` command with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and argparse's usage errors
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except UsageError as e:
        print(f"ppl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        trace = "".join(traceback.format_exception(e.error)).rstrip() + "\n" if e.traceback else ""
        print(f"{trace}ppl {args.command}: the run failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ppl {args.command}: interrupted{_saved(getattr(args, 'out', None))}",
              file=sys.stderr)  # fmt: skip
        return 130


def _saved(out: str | None) -> str:
    """What an interrupted run kept: the finished items in --out, if any."""
    if out is None:
        return ""
    indices = set()
    try:
        with open(out, "rb") as f:
            for line in f.read().split(b"\n")[:-1]:  # a line cut off by the stop is not saved
                try:
                    indices.add(json.loads(line)["index"])
                except (ValueError, KeyError, TypeError):
                    continue
    except OSError:
        pass
    finished = len(indices)
    if not finished:
        return f"; no item had finished, so nothing was saved to {out}"
    items = "1 finished item" if finished == 1 else f"{finished} finished items"
    return f"; {out} holds {items}: a rerun of this command resumes from there"


# -- ppl run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """`ppl run`: the items through `ppl.map`, a summary of each, the totals; the exit status."""
    _, program = load_program(args.target)
    method = METHODS[args.method]
    params = program.code.signature.parameters
    model = args.model if args.model is not None else ("embedded" if "lm" in params else None)
    shared = dict(args.arg or [])
    lines = read_inputs(args.inputs) if args.inputs is not None else [(0, {})]
    source = args.inputs if args.inputs is not None else "--arg"
    todo = items(program, shared, lines, source, model_is_lm=model is not None)

    options: dict[str, Any] = {}
    for name in ("particles", "chains", "steps"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.html is not None:
        if "record" not in inspect.signature(method).parameters:
            raise UsageError(
                f"--html draws the steps of a particle run; --method {args.method} has none: "
                "use smc, importance or smc_steer"
            )
        options["record"] = True
    settings: dict[str, Any] = {"seed": args.seed, "checkpoint": args.out, "model": model}
    if args.allow_pickle:
        settings["allow_pickle"] = True
    for name in ("rows", "cluster", "workers"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    settings["progress"] = False if args.no_progress else None

    with warnings.catch_warnings():
        # the failures are printed below, each with its error line
        warnings.filterwarnings(
            "ignore", message=r"ppl\.map: \d+ of \d+ items raised", category=InferenceWarning
        )
        try:  # imap checks everything, and reads the checkpoint, before anything runs
            running = ppl.imap(method, program, todo, **settings, **options)
        except (TypeError, ValueError, OSError) as e:
            # the command's mistakes: options, inputs, a model name, a checkpoint of other work
            raise UsageError(str(e)) from None
        try:
            results = running.results()
        except SaveError as e:  # a result --out cannot hold: the message says what and where
            hint = " (from the command line: --allow-pickle)" if e.needs_pickle else ""
            raise RunError(e, traceback=False, hint=hint) from None
        except ImportError as e:
            if args.cluster is None or "ray" not in str(e).lower():
                raise RunError(e) from e
            hint = "pip install ray, or pip install -e '.[ray]' in a clone of ppl"
            raise UsageError(f"{e} (--cluster needs Ray: {hint})") from None
        except Exception as e:
            raise RunError(e) from e

    where = [f"{args.inputs}, line {n}" for n, _ in lines] if args.inputs is not None else None
    report(results, sys.stdout, where)
    if args.html is not None:
        write_html(results, Path(args.html), sys.stdout)
    if args.out is not None:
        print(f"results in {args.out}: a rerun of this command resumes from it "
              "(items that failed run again)")  # fmt: skip
    return 0 if results.ok else 1


def load_file(path: str | Path) -> ModuleType:
    """FILE loaded as a fresh module named `_ppl_file_<stem>`, its `__main__` block not run."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{path}: no such file")
    if file.suffix != ".py":
        raise UsageError(f"{path}: not a Python file (.py)")
    name = "_ppl_file_" + re.sub(r"\W", "_", file.stem)
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: cannot be loaded as a module")
    module = importlib.util.module_from_spec(spec)
    directory = str(file.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    # registered before it runs, as an import would: dataclasses and pickling look it up by name
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        del sys.modules[name]
        raise UsageError(f"{path} raised while loading:\n{_own_traceback(e, file)}") from None
    return module


def load_program(target: str) -> tuple[ModuleType, Program]:
    """The module and the `ppl.Program` that `FILE.py:PROGRAM` names."""
    path, colon, name = target.rpartition(":")
    if not colon or target.endswith(".py"):
        path, name = target, ""
    module = load_file(path)
    programs = sorted(n for n, v in vars(module).items() if isinstance(v, Program))
    listing = f"its programs: {', '.join(programs)}" if programs else "it defines no @ppl.program"
    if not name:
        raise UsageError(f"name the program to run as {path}:PROGRAM ({listing})")
    found = vars(module).get(name)
    if found is None:
        raise UsageError(f"{path} has no {name!r} ({listing})")
    if not isinstance(found, Program):
        raise UsageError(
            f"{path}:{name} is a {type(found).__name__}, not a @ppl.program ({listing})"
        )
    return module, found


def parse_arg(text: str) -> tuple[str, Any]:
    """`NAME=VALUE`, VALUE read as JSON when it parses (numbers, true, lists), else as text."""
    name, eq, value = text.partition("=")
    if not eq or not name.isidentifier():
        raise argparse.ArgumentTypeError(
            f"{text!r}: write NAME=VALUE, e.g. --arg max_tokens=20 or --arg prompt='Once upon'"
        )
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def read_inputs(path: str) -> list[tuple[int, dict | list]]:
    """The items of a JSONL file ("-": stdin) as (line number, JSON object or array)."""
    shape = "each line is a JSON object of keyword arguments or a JSON array of positional ones"
    try:
        f: TextIO = sys.stdin if path == "-" else open(path, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"--inputs {path}: {e.strerror}") from None
    out = []
    try:
        with f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except ValueError as e:
                    raise UsageError(f"{path}, line {number}: not JSON ({e}); {shape}") from None
                if not isinstance(value, (dict, list)):
                    raise UsageError(f"{path}, line {number}: {line.strip()[:40]!r}; {shape}")
                out.append((number, value))
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not out:
        raise UsageError(f"{path}: no inputs (the file has no line that is not blank)")
    return out


def items(
    program: Program,
    shared: dict[str, Any],
    lines: list[tuple[int, dict | list]],
    source: str,
    *,
    model_is_lm: bool,
) -> list[dict[str, Any]]:
    """One keyword-argument dict per line: `shared` updated by the line (the line wins).

    An array is bound to the program's positional parameters in order (`lm` left out when a
    model is passed as `lm`). Names the program does not take are refused here, before any run.
    """
    params = program.code.signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    positional = [
        n
        for n, p in params.items()
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and not (model_is_lm and n == "lm")
    ]
    name = program.__qualname__
    for key in shared:
        if key not in params and not takes_any:
            raise UsageError(f"--arg {key}: {name}() has no parameter {key!r} ({_sig(program)})")
    out = []
    for number, line in lines:
        where = source if source == "--arg" else f"{source}, line {number}"
        if isinstance(line, list):
            if len(line) > len(positional):
                raise UsageError(
                    f"{where}: {len(line)} values, but {name}() takes {len(positional)} by "
                    f"position ({', '.join(positional) or 'none'}); give a JSON object instead"
                )
            line = dict(zip(positional, line))
        for key in line:
            if key not in params and not takes_any:
                raise UsageError(f"{where}: {name}() has no parameter {key!r} ({_sig(program)})")
        out.append({**shared, **line})
    expected = _expected_types(program)
    for key, value in shared.items():
        _check_type(name, key, value, expected, "--arg")
    for (number, _), item in zip(lines, out):
        where = source if source == "--arg" else f"{source}, line {number}"
        for key, value in item.items():  # a shared value that fits was checked above
            _check_type(name, key, value, expected, where)
    return out


def _expected_types(program: Program) -> dict[str, tuple[Any, str]]:
    """Each parameter's expected type, from its annotation or else its default's type, with how
    to name it: {name: (type, "int")}. Parameters with neither are left out."""
    import typing

    try:
        hints = typing.get_type_hints(program.fn)
    except Exception:  # an annotation that does not resolve: read the plain names only
        simple = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}
        hints = {
            n: simple[a] for n, a in program.fn.__annotations__.items() if a in simple
        }  # fmt: skip
    out = {}
    for n, p in program.code.signature.parameters.items():
        if n in hints:
            out[n] = (hints[n], _type_name(hints[n]))
        elif p.default is not inspect.Parameter.empty and type(p.default) in (int, float):
            out[n] = (float, "a number (its default is " + repr(p.default) + ")")
        elif p.default is not inspect.Parameter.empty and type(p.default) in (str, bool):
            kind = type(p.default)
            out[n] = (kind, f"{kind.__name__} (its default is {p.default!r})")
    return out


def _type_name(t: Any) -> str:
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")


def _fits(value: Any, t: Any) -> bool | None:
    """Whether a value read from JSON fits type `t`; None when that cannot be told."""
    import types
    import typing

    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t in (str, bool):
        return isinstance(value, t)
    if t is type(None):
        return value is None
    if t in (list, tuple):
        return isinstance(value, list)
    if t is dict:
        return isinstance(value, dict)
    origin = typing.get_origin(t)
    arguments = typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        fits = [_fits(value, a) for a in arguments]
        return True if any(f is True for f in fits) else None if None in fits else False
    if origin is typing.Literal:
        return value in arguments
    if origin in (list, tuple) or (isinstance(origin, type) and origin.__name__ == "Sequence"):
        if not isinstance(value, list):
            return False
        if origin is list and len(arguments) == 1:
            each = [_fits(v, arguments[0]) for v in value]
            return False if False in each else None if None in each else True
        return True
    if origin is dict:
        return isinstance(value, dict)
    return None


def _check_type(
    name: str, key: str, value: Any, expected: dict[str, tuple[Any, str]], where: str
) -> None:
    if key not in expected or _fits(value, expected[key][0]) is not False:
        return
    what = f"{value!r:.60} ({type(value).__name__})"
    hint = ""
    if not isinstance(value, str) and _fits(json.dumps(value), expected[key][0]):
        text = f"{key}='\"{value}\"'" if where == "--arg" else f'"{key}": "{value}"'
        hint = f"; for the text, write it as a JSON string: {text}"
    elif value in (0, 1) and _fits(True, expected[key][0]):
        hint = f"; write {key}=true or {key}=false"
    raise UsageError(
        f"{where}: {key}={what} does not fit {name}()'s parameter {key}: {expected[key][1]}{hint}"
    )


def report(results: Results, out: TextIO, where: list[str] | None = None) -> None:
    """Per item: index, log evidence, final ESS (acceptance for MCMC), the top values; totals.

    A failed item shows its error line, and `where[i]` (its input line) when given.
    """
    for i, result in enumerate(results):
        if isinstance(result, ItemError):
            origin = f" ({where[i]})" if where is not None else ""
            print(f"[{i}] FAILED{origin}  {result.error}", file=out)
            continue
        z = "n/a" if result.log_evidence is None else f"{result.log_evidence:.4f}"
        if result.chain is not None:
            rate = result.acceptance_rate
            spread = f"acceptance {'n/a' if rate is None else f'{rate:.3f}'}"
        else:
            spread = f"ESS {result.final_ess:.2f} of {result.num_particles}"
        print(f"[{i}] log evidence {z}  {spread}", file=out)
        if result.failure:
            print(f"    no sample has positive weight: {result.failure}", file=out)
            continue
        for value, weight in _top(result, TOP):
            print(_value_line(value, weight), file=out)
    s = results.stats
    print(
        f"{s.get('items', len(results))} items, {s.get('failed', len(results.failures))} failed, "
        f"{s.get('resumed', 0)} resumed, {s.get('seconds', 0.0):.1f} s",
        file=out,
    )


def write_html(results: Results, path: Path, out: TextIO) -> None:
    """`Posterior.html` of each item: to `path` for one item, else to `<stem>-<i><suffix>`."""
    for i, result in enumerate(results):
        if not isinstance(result, Posterior):
            continue
        target = path if len(results) == 1 else path.with_name(f"{path.stem}-{i}{path.suffix}")
        if result.history is None:
            print(f"html: item {i} has no record of its steps (run without --html)", file=out)
            continue
        result.html(str(target), title=f"ppl {result.method} run, item {i}")
        print(f"html: {target}", file=out)


def _top(post: Posterior, n: int) -> list[tuple[Any, float]]:
    try:
        return list(post.distribution().items())[:n]
    except TypeError:  # unhashable values: by particle
        ranked = sorted(zip(post.values, post.weights.tolist()), key=lambda x: -x[1])
        return [(v, w) for v, w in ranked if w > 0][:n]


def _value_line(value: Any, weight: float) -> str:
    text = value.replace("\n", "\\n") if isinstance(value, str) else repr(value)
    if len(text) > VALUE_CHARS:
        text = text[: VALUE_CHARS - 3] + "..."
    return textwrap.fill(
        text or "''",
        width=WIDTH,
        initial_indent=f"    {weight:6.3f}  ",
        subsequent_indent=" " * 14,
        replace_whitespace=False,
    )


def _sig(program: Program) -> str:
    return f"its parameters: {', '.join(program.code.signature.parameters) or 'none'}"


def _own_traceback(e: BaseException, file: Path) -> str:
    """The traceback of `e` from the first frame in `file` on (none of the loading machinery)."""
    tb = e.__traceback__
    target = file.resolve()
    while tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve() != target:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb)).rstrip()


# -- ppl demo ------------------------------------------------------------------------------------


def demo(args: argparse.Namespace) -> int:
    """`ppl demo`: `main()` of tutorials/short_words.py, the README's demo."""
    if not DEMO.is_file():
        raise UsageError(
            f"the demo is tutorials/short_words.py of the source repository, not found at "
            f"{DEMO}: ppl was installed without it; run it from a clone of the repository"
        )
    module = load_file(DEMO)
    given = {k: getattr(args, k) for k in ("particles", "max_tokens", "seed")}
    module.main(**{k: v for k, v in given.items() if v is not None})
    return 0


# -- ppl serve ----------------------------------------------------------------------------------

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(args: argparse.Namespace) -> int:
    """`ppl serve`: the model (and the named programs) behind an OpenAI-compatible endpoint."""
    import logging
    import os

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError(
            "ppl serve needs FastAPI and uvicorn: pip install fastapi uvicorn "
            "prometheus-client, or pip install -e '.[serve]' in a clone of ppl"
        ) from None
    from ppl.models.spec import ModelSpec
    from ppl.serve import serve as run_server

    api_key = args.api_key or os.environ.get("PPL_API_KEY") or None
    if args.host not in LOOPBACK and api_key is None:
        raise UsageError(
            f"--host {args.host} is reachable from other machines: give --api-key KEY (or set "
            "PPL_API_KEY), which clients then send as 'Authorization: Bearer KEY'"
        )
    try:
        spec = ModelSpec.parse(args.model)
    except ValueError as e:
        raise UsageError(str(e)) from None
    programs: dict[str, Program] = {}
    for target in args.program or []:
        _, found = load_program(target)
        name = target.rpartition(":")[2]
        if name in programs:
            raise UsageError(f"--program {target}: a program named {name!r} is already served")
        programs[name] = found
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(f"ppl serve: loading the model {spec} ...", file=sys.stderr, flush=True)
    try:
        lm = spec.build()
    except Exception as e:
        raise RunError(e) from e

    def ready(url: str) -> None:
        listed = f"; programs: {', '.join(programs)}" if programs else ""
        print(f"ppl serve: ready at {url}/v1 (model {args.model}{listed})", flush=True)

    run_server(
        lm,
        args.model,
        programs=programs,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_running=args.max_running,
        max_queue=args.max_queue,
        rows=args.rows,
        timeout=args.timeout,
        compile_seconds=args.compile_seconds,
        ready=ready,
    )
    return 0


# -- the parser ----------------------------------------------------------------------------------


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return n


def _seed(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return n


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppl",
        description="ppl: a probabilistic programming language for steering language models.",
        epilog="Exit status: 0 every item ran, 1 some item raised, 2 the command could not start.",
    )
    parser.add_argument("--version", action="version", version=f"ppl {ppl.__version__}")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = commands.add_parser(
        "run",
        help="run a program on one input or on every line of a JSONL file",
        description=(
            "Run PROGRAM of FILE.py with an inference method, on the --arg values or on every "
            "line of --inputs, through ppl.map. Item i runs with seed (SEED, i), the same run as "
            "ppl.map or the method called in Python."
        ),
        epilog=(
            "Exit status: 0 every item ran, 1 some item raised (its error is printed; --out "
            "keeps the traceback), 2 the command could not start (usage, FILE, PROGRAM, "
            "--arg, --inputs, or options or a checkpoint that ppl.map refuses)."
        ),
    )
    p.add_argument("target", metavar="FILE.py:PROGRAM", help="a @ppl.program defined in FILE.py")
    p.add_argument("--method", choices=list(METHODS), default="smc", help="default: smc")
    p.add_argument("--particles", type=_count, metavar="N", help="particles (smc, importance, ...)")
    p.add_argument("--chains", type=_count, metavar="N", help="chains (mh)")
    p.add_argument("--steps", type=_count, metavar="N", help="steps (mh, pimh, pgibbs)")
    p.add_argument(
        "--seed", type=_seed, default=0, metavar="S", help="item i runs with seed (SEED, i)"
    )
    p.add_argument(
        "--arg",
        type=parse_arg,
        action="append",
        metavar="NAME=VALUE",
        help="a keyword argument of the program, shared by every item; VALUE is read as JSON "
        "when it parses (20, true, [1, 2], '\"20\"' for text), else as text; repeatable",
    )
    p.add_argument(
        "--inputs",
        metavar="FILE.jsonl",
        help="one item per line: a JSON object of keyword arguments or a JSON array of "
        "positional ones, merged with the --arg values (a line wins over --arg); blank lines "
        "are skipped; '-' reads stdin",
    )
    p.add_argument(
        "--out",
        metavar="FILE.jsonl",
        help="the checkpoint: each finished item is appended at once, and a rerun of the same "
        "command resumes from it (without --out nothing is written)",
    )
    p.add_argument(
        "--html",
        metavar="FILE.html",
        help="a page of each run's steps (smc, importance, smc_steer; runs them with "
        "record=True): FILE.html for one item, FILE-<i>.html for item i of several; items "
        "resumed from an --out file written without --html have no record and no page",
    )
    p.add_argument(
        "--model",
        metavar="embedded|hf:NAME",
        help="the model, passed to the program as its `lm` argument (default: 'embedded' when "
        "the program has a parameter lm, else none: the program uses its own)",
    )
    p.add_argument(
        "--rows", type=_count, metavar="N", help="most rows in one forward pass (default: 256)"
    )
    p.add_argument("--cluster", metavar="ray|ADDRESS", help="run the items on Ray workers")
    p.add_argument("--workers", type=_count, metavar="N", help="Ray workers (default: one per CPU)")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="let --out hold results JSON cannot (pickled); needed again to resume from it. "
        "Unsafe for files from others: unpickling can run any code",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar over items")
    p.set_defaults(handler=run, command="run")

    d = commands.add_parser(
        "demo",
        help="the README's demo: a story with no word over five letters",
        description="Run tutorials/short_words.py: SMC steers the embedded model to tell a "
        "story in which no word has more than five letters.",
    )
    d.add_argument("--particles", type=_count, metavar="N", help="default: 16")
    d.add_argument("--max-tokens", type=_count, metavar="N", help="default: 40")
    d.add_argument("--seed", type=_seed, metavar="S", help="default: 0")
    d.set_defaults(handler=demo, command="demo")

    s = commands.add_parser(
        "serve",
        help="serve the model and programs behind an OpenAI-compatible endpoint",
        description="Serve exact constrained generation (and --program endpoints) over HTTP, "
        "for any OpenAI client: POST /v1/chat/completions, /v1/completions, "
        "/v1/programs/NAME; GET /v1/models, /v1/programs, /health. See docs/serving.md.",
    )
    s.add_argument(
        "--model",
        default="embedded",
        metavar="embedded|hf:NAME",
        help="the model to serve (default: embedded)",
    )
    s.add_argument(
        "--program",
        action="append",
        metavar="FILE.py:PROGRAM",
        help="serve this program at POST /v1/programs/PROGRAM (repeatable)",
    )
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1; any other needs --api-key)",
    )
    s.add_argument("--port", type=int, default=8000, help="default: 8000")
    s.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (default: $PPL_API_KEY)",
    )
    s.add_argument(
        "--max-running",
        type=_count,
        default=16,
        metavar="N",
        help="requests run at once, sharing each forward pass (default: 16)",
    )
    s.add_argument(
        "--max-queue",
        type=_seed,
        default=64,
        metavar="N",
        help="requests waiting beyond those; past it, 429 (default: 64)",
    )
    s.add_argument(
        "--rows", type=_count, metavar="N", help="most rows in one forward pass (default: no limit)"
    )
    s.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="a run taking longer ends with 504 (default: none)",
    )
    s.add_argument(
        "--compile-seconds",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a request's schema, grammar or regex must compile within this; else 400 "
        "(default: 10)",
    )
    s.set_defaults(handler=serve, command="serve")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
