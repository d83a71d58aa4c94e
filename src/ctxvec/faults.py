"""Crash points: places where a test may kill the process as hard as a power cut would.

``crash_point(name)`` does nothing unless the environment variable ``CTXVEC_CRASH_AT`` names it;
then the process sends itself SIGKILL (no cleanup, no ``finally``, no atexit), which is how the
crash-safety tests check that every interrupted stage leaves the workspace consistent and that a
re-run completes the work. Production runs never set the variable.
"""

from __future__ import annotations

import logging
import os
import signal

ENV = "CTXVEC_CRASH_AT"
log = logging.getLogger(__name__)


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        log.warning("crash point %s: killing this process (%s=%s)", name, ENV, name)
        for h in logging.getLogger().handlers:
            h.flush()
        os.kill(os.getpid(), signal.SIGKILL)
