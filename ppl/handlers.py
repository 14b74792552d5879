"""Effect handlers for direct runs: `trace`, `seed`, `condition`, `replay`, `block`, `scale`.

A program called directly sends each primitive as a message (`ppl.runtime.Message`) through
a stack of handlers, innermost first; each handler may change it (fix its value, scale its
density, hide it) before the default behaviour samples a value, and sees the result afterwards.
A handler wraps a callable, `trace(model)(*args)`, or is used as a context manager,
`with seed(0): model(*args)`.

Under inference (`ppl.smc`, `ppl.importance`, ...) programs run compiled and these handlers do
not apply, with one exception: `condition(program, data)` returns a program whose fixed choices
every inference method honours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ppl.runtime import _SCOPE, _STACK, BaseProgram, Message, Scope, as_log_weight, generators
from ppl.trace import Choice, Trace


class Messenger:
    """Base class: a handler on the stack while it runs its function or its `with` block."""

    def __init__(self, fn: Callable[..., Any] | None = None) -> None:
        self.fn = fn

    def __enter__(self) -> Messenger:
        _STACK.set((*_STACK.get(), self))
        return self

    def __exit__(self, *exc: Any) -> None:
        # the stack this one extended: this context's own, so another thread's or task's
        # handlers never leave it
        stack = _STACK.get()
        if stack and stack[-1] is self:
            _STACK.set(stack[:-1])
        elif self in stack:  # left out of order (entered and left by hand): remove this one
            i = len(stack) - 1 - stack[::-1].index(self)
            _STACK.set(stack[:i] + stack[i + 1 :])

    def process_message(self, msg: Message) -> None:
        """Called before the value is drawn, innermost handler first."""

    def postprocess_message(self, msg: Message) -> None:
        """Called after the value is drawn, outermost handler first."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fn is None:
            name = type(self).__name__
            raise TypeError(
                f"{name}() was given no function: wrap one, {name}(model, ...), "
                f"or use it as `with {name}(...):`"
            )
        # a plain-function model gets an address scope of its own, as a program has
        if _SCOPE.get() is not None or isinstance(self.fn, (BaseProgram, Messenger)):
            with self:
                return self.fn(*args, **kwargs)
        token = _SCOPE.set(Scope(""))
        try:
            with self:
                return self.fn(*args, **kwargs)
        finally:
            _SCOPE.reset(token)


class trace(Messenger):
    """Record the choices of a run in a `ppl.trace.Trace`.

    Each sample becomes a `Choice` (address, value, log probability); observations, factors and
    conditions add to `log_likelihood`. A name used twice in one run is an error.

    >>> from ppl import program, sample, observe
    >>> from ppl.distributions import Bernoulli
    >>> @program
    ... def coin():
    ...     heads = sample("heads", Bernoulli(0.5))
    ...     observe(Bernoulli(0.9 if heads else 0.2), True)
    ...     return heads
    >>> tr = trace(condition(coin, {"heads": True})).get_trace()
    >>> round(tr.log_likelihood, 4) == round(math.log(0.5 * 0.9), 4), len(tr)
    (True, 0)
    """

    def __init__(self, fn: Callable[..., Any] | None = None) -> None:
        super().__init__(fn)
        self.choices: list[Choice] = []
        self.log_likelihood = 0.0
        self._seen: set[str] = set()

    def __enter__(self) -> trace:
        self.choices, self.log_likelihood, self._seen = [], 0.0, set()
        return super().__enter__()  # type: ignore[return-value]

    @property
    def trace(self) -> Trace:
        return Trace(self.choices, self.log_likelihood)

    def get_trace(self, *args: Any, **kwargs: Any) -> Trace:
        """Run the wrapped function with these arguments; its trace."""
        self(*args, **kwargs)
        return self.trace

    def postprocess_message(self, msg: Message) -> None:
        site, address = msg["site"], msg["address"]
        if msg["type"] == "factor":
            self._add(msg["log_weight"] * msg["scale"] if msg["scale"] != 1 else msg["log_weight"])
            return
        if address in self._seen:
            raise ValueError(
                f"{site.filename}:{site.lineno}: the address {address!r} is used twice in one "
                "run; give choices made in a loop distinct names, e.g. sample(f'x{i}', dist)"
            )
        self._seen.add(address)
        log_p = float(msg["fn"].log_prob(msg["value"])) * msg["scale"]
        if msg["observed"]:
            self._add(log_p)
        else:
            self.choices.append(Choice(site, msg["name"], msg["value"], log_p, address))

    def _add(self, log_w: Any) -> None:
        w = as_log_weight(log_w, "trace")
        self.log_likelihood = -math.inf if w == -math.inf else self.log_likelihood + w


class seed(Messenger):
    """Draw every choice from generators seeded by `rng_seed`.

    Each run under the handler starts from the same state, and makes the same choices as the
    particle of `ppl.importance(program, particles=1, seed=rng_seed)`: values of distributions
    (and NumPyro keys) from its NumPy generator, language-model tokens from its torch generator,
    drawn as the engine draws them (see `ppl.runtime.generators`).

    >>> from ppl import program, sample
    >>> from ppl.distributions import Categorical
    >>> @program
    ... def die():
    ...     return sample(Categorical(range(1, 7)))
    >>> seed(die, 3)() == seed(die, 3)()
    True
    """

    def __init__(self, fn: Callable[..., Any] | int | None = None, rng_seed: int | None = None):
        if rng_seed is None and isinstance(fn, int):
            fn, rng_seed = None, fn
        super().__init__(fn)  # type: ignore[arg-type]
        self.rng_seed = rng_seed

    def __enter__(self) -> seed:
        _, self.rng, self.torch_gen = generators(self.rng_seed)
        return super().__enter__()  # type: ignore[return-value]

    def process_message(self, msg: Message) -> None:
        infer = msg["infer"]
        if "rng" not in infer:  # an inner seed handler wins
            # values of distributions from the NumPy generator, tokens from the torch one
            infer["rng"] = self.rng
            infer["torch_gen"] = self.torch_gen


class condition(Messenger):
    """Fix the choices at the addresses in `data`, turning them into observations.

    A fixed choice returns its given value and adds log p(value) to the run's likelihood, so the
    program is queried as P(rest | fixed choices). Forms:

    * `condition(program, data)` with a `@program`: a program with those choices fixed, that
      runs directly and under every inference method;
    * `condition(fn, data)` with a plain function: a handler for direct runs;
    * `with condition(data): ...`.

    (`condition(ok)` with a truth value is the primitive, `ppl.primitives.condition`.)

    >>> from ppl import program, sample
    >>> from ppl.distributions import Bernoulli
    >>> @program
    ... def two_coins():
    ...     return sample("a", Bernoulli(0.5)), sample("b", Bernoulli(0.5))
    >>> condition(two_coins, {"a": False})()[0]
    False
    """

    def __new__(cls, fn: Any = None, data: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        if isinstance(fn, Mapping) and data is None:
            fn, data = None, fn
        if isinstance(fn, BaseProgram):  # a @program (the compiler sits above this module)
            return fn.conditioned(_check_data(data))
        return super().__new__(cls)

    def __init__(
        self, fn: Any = None, data: Mapping[str, Any] | None = None, *, root: str = ""
    ) -> None:
        if isinstance(fn, Mapping) and data is None:
            fn, data = None, fn
        super().__init__(fn)
        self.data = _check_data(data)
        self.root = root  # addresses in `data` are relative to this prefix

    def process_message(self, msg: Message) -> None:
        if msg["type"] != "sample" or msg["observed"]:
            return
        address: str = msg["address"]
        if address.startswith(self.root):
            key = address[len(self.root) :]
            if key in self.data:
                msg["value"] = self.data[key]
                msg["observed"] = True


def _check_data(data: Any) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise TypeError(
            f"condition() as a handler takes a dict {{address: value}}, got {type(data).__name__}"
        )
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise TypeError(f"condition(): addresses are strings, got {bad[:3]}")
    return dict(data)


class replay(Messenger):
    """Give each choice whose address is in `trace` the value it has there.

    Choices not in `trace` are drawn afresh; replayed choices stay choices (not observations),
    with their log probability under the new run's distributions.

    >>> from ppl import program, sample
    >>> from ppl.distributions import Categorical
    >>> @program
    ... def pair():
    ...     return sample("x", Categorical(range(100))), sample("y", Categorical(range(100)))
    >>> old = trace(seed(pair, 0)).get_trace()
    >>> replay(pair, old)() == (old["x"].value, old["y"].value)
    True
    """

    def __init__(self, fn: Callable[..., Any] | None = None, trace: Trace | None = None) -> None:
        if trace is None and isinstance(fn, Trace):
            fn, trace = None, fn
        if not isinstance(trace, Trace):
            raise TypeError(f"replay() needs a ppl Trace, got {type(trace).__name__}")
        super().__init__(fn)
        self.trace = trace

    def process_message(self, msg: Message) -> None:
        if msg["type"] == "sample" and not msg["observed"] and msg["address"] in self.trace:
            msg["value"] = self.trace[msg["address"]].value


class block(Messenger):
    """Hide messages from the handlers outside this one.

    Hides every message, or only those whose address is in `hide`, or all but those in
    `expose`, or those for which `hide_fn(msg)` is true.

    >>> from ppl import program, sample
    >>> from ppl.distributions import Bernoulli
    >>> @program
    ... def coins():
    ...     return sample("a", Bernoulli(0.5)), sample("b", Bernoulli(0.5))
    >>> trace(block(coins, hide=["a"])).get_trace().addresses()
    ['b']
    """

    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        hide: Iterable[str] | None = None,
        expose: Iterable[str] | None = None,
        hide_fn: Callable[[Message], bool] | None = None,
    ) -> None:
        super().__init__(fn)
        if hide_fn is None:
            if hide is not None:
                hidden = set(hide)
                hide_fn = lambda msg: msg["address"] in hidden
            elif expose is not None:
                shown = set(expose)
                hide_fn = lambda msg: msg["address"] not in shown
            else:
                hide_fn = lambda msg: True
        self.hide_fn = hide_fn

    def process_message(self, msg: Message) -> None:
        if self.hide_fn(msg):
            msg["stop"] = True


class scale(Messenger):
    """Multiply the log density of every site by `factor` > 0 (tempering, minibatches).

    >>> from ppl import program, observe
    >>> from ppl.distributions import Bernoulli
    >>> @program
    ... def data():
    ...     observe(Bernoulli(0.5), True)
    >>> round(trace(scale(data, 3.0)).get_trace().log_likelihood, 4) == round(3 * math.log(0.5), 4)
    True
    """

    def __init__(self, fn: Callable[..., Any] | float | None = None, factor: float | None = None):
        if factor is None and isinstance(fn, (int, float)):
            fn, factor = None, fn
        if factor is None or not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"scale() needs a finite factor > 0, got {factor!r}")
        super().__init__(fn)  # type: ignore[arg-type]
        self.factor = float(factor)

    def process_message(self, msg: Message) -> None:
        msg["scale"] = msg["scale"] * self.factor


__all__ = ["Messenger", "trace", "seed", "condition", "replay", "block", "scale"]
