"""Named crash points for the fault-injection tests (the way SQLite tests itself).

The writer calls :func:`crash_point` at each step where a crash matters (vectors appended but not
committed, a compacted file written but not swapped in, ...). It does nothing unless the
environment variable ``SHARPCLIP_CRASH_AT`` names that point, as ``NAME`` or ``NAME:N`` (the
N-th time it is reached, from 1); then the process kills itself with SIGKILL, exactly like
``kill -9`` at that instant. Tests set it in a child process only.
"""

from __future__ import annotations

import os
import signal

ENV = "SHARPCLIP_CRASH_AT"
_reached: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL this process here if ``SHARPCLIP_CRASH_AT`` names ``name`` (and this visit)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted, _, nth = spec.partition(":")
    if wanted != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
