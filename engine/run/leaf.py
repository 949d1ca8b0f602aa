"""What the interpreter needs to run a leaf node, whatever format the program came from.

Each format builds a ``LeafOp`` per node (``engine.formats.torchscript.ops``
compiles one-node TorchScript functions, ``engine.formats.exported`` calls
the node's ``OpOverload``); the machine and the C loop only call ``run`` and
read which inputs the op writes.
"""

from __future__ import annotations

from typing import Callable

Runner = Callable[[list], list]

#: The position of a norm's ``training`` input (see ``LeafOp.training_writes``).
TRAINING = 5


class LeafOp:
    """How the interpreter runs one leaf node.

    ``run(args)`` takes the node's input values and returns its outputs as a
    fresh list; ``writes`` are the inputs whose tensors the op overwrites,
    ``mutates`` those whose lists or dicts it changes, ``training_writes``
    those it overwrites only when its input ``TRAINING`` is True (a norm's
    running statistics, which its schema does not mark).  ``deterministic``:
    running it again on the same inputs gives the same bits (what lets the
    timeline remake an overwritten value instead of copying it).  ``run`` may
    replace itself after its first call.
    """

    __slots__ = ("run", "writes", "mutates", "training_writes", "deterministic")

    def __init__(self, run: Runner, writes: tuple[int, ...] = (), mutates: tuple[int, ...] = (),
                 training_writes: tuple[int, ...] = (), deterministic: bool = True):
        self.run = run
        self.writes = writes
        self.mutates = mutates
        self.training_writes = training_writes
        self.deterministic = deterministic

    def writes_now(self, args: list) -> tuple[int, ...]:
        """The inputs this call overwrites: its schema's, and a norm's statistics in training mode."""
        if self.training_writes and len(args) > TRAINING and args[TRAINING] is True:
            return self.writes + self.training_writes
        return self.writes


class Messages:
    """What the model printed or warned while running, kept off the terminal."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def warn(self, message: str, *_rest) -> None:
        self.lines.append(f"warning: {message}")

    def print(self, *args) -> None:
        self.lines.append(" ".join(str(a) for a in args))
