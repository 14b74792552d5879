"""`@program`: compile a Python function into a resumable, forkable state machine.

Python generators cannot be copied, and replaying a program from its start to fork it costs time
in proportion to its length. So `@program` rewrites the function's AST into *blocks*: straight-
line pieces of the original code that end where the program may suspend. Every local variable
lives in one dict `L`; the program counter is the index of the next block. A suspended program is
therefore just `(pc, L)`, and forking it is `(pc, deepcopy(L))`: value semantics at a cost in
proportion to the size of the state, not to the number of steps taken.

Suspension points ("sites") are calls to the primitives (`sample`, `observe`, `factor`,
`condition`) and calls to other programs. A block ends at a site by returning

    (resume_pc, target, site_id, callee, args, kwargs)

and the engine (`ppl.inference.engine`) interprets the call, stores its result in `L[target]`
and resumes at `resume_pc`. A block returns an int to jump, and `(-1, value)` to return.

The package, in the order a reader needs it:

    programs.py          `Program`, `@program`, nested programs, and how a program is pickled
    lower.py             the lowering: a function's AST rewritten into blocks
    state.py             `Code` (the blocks, run and caught) and `Locals` (how a fork copies them)
    runtime_helpers.py   the helpers that generated blocks call
    source.py            finding a function's source, and verifying that it is the one that runs
    errors.py            `CompileError` and `SourceChangedError`
"""

from ppl.compiler.errors import CompileError, SourceChangedError
from ppl.compiler.programs import Program, program
from ppl.compiler.programs import _unpickle_program as _unpickle_program
from ppl.compiler.source import _Source as _Source
from ppl.compiler.state import Code

__all__ = ["Code", "CompileError", "Program", "SourceChangedError", "program"]
# `_unpickle_program` and `_Source` stay importable from here too: a program pickled before
# `ppl.compiler` was a package names them by reference as `ppl.compiler.<name>`
