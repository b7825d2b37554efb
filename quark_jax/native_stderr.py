"""What C++ libraries (TensorFlow, libtpu) write to file descriptor 2 while they start, kept off the terminal.

Python's ``sys.stderr`` cannot catch those lines: they are written by native code straight to the descriptor.
:func:`filtered` points descriptor 2 at a temporary file for the duration of a block and then writes back every
line that ``keep`` accepts (none, by default), so a failure inside the block still surfaces -- as the exception
it raises, and as any line ``keep`` lets through. Only short start-up steps belong inside such a block.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def filtered(keep: Callable[[str], bool] = lambda line: False) -> Iterator[None]:
    """Collects descriptor 2 inside the block; afterwards writes back the lines for which ``keep`` is true."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if keep(line):
                    sys.stderr.write(line)
            sys.stderr.flush()
