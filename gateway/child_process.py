"""Children that never outlive the gateway process that started them.

Every program the gateway runs (Janus, the embedded Redis, roster parsers, the workers
of a group) is started with :func:`die_with_parent`: on Linux the child asks the kernel,
between fork and exec, for a signal when its parent dies (``prctl(PR_SET_PDEATHSIG)``),
so even a parent killed with SIGKILL, which runs no clean-up at all, takes its children
along. Normal exits still stop the children themselves, in order (gateway/cli.py).

NOTE: the kernel ties the signal to the *thread* that forked, not the process. Start
children from the event loop's thread (``asyncio.create_subprocess_exec`` does), and
run that loop on a thread that lives as long as the children should.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Final

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG: Final = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies
    (``None`` off Linux, where no such kernel feature exists)."""
    if sys.platform != "linux":
        return None
    parent_pid = os.getpid()
    # Resolved here, in the parent: dlopen after fork in a threaded process can deadlock.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:  # in the child, between fork and exec: prctl and getppid only
        if prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent may have died between fork and prctl; then nobody will signal us.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), sig)

    return preexec
