"""Children that end with their parent, even one killed with SIGKILL (which runs no cleanup).

On Linux a child can ask for a signal when its parent dies: prctl(PR_SET_PDEATHSIG). Setting it in
a `preexec_fn` made CPython fork() the whole parent instead of vfork(): in a parent with gRPC
loaded, gRPC's fork handlers restarted its poller in the child, whose epoll descriptor
`close_fds` then closed before exec, so the child aborted ("epoll_wait error: Bad file
descriptor", SIGABRT; or SIGSEGV) before its program ever ran, about one spawn in five under gRPC
traffic. Instead the child is spawned plainly and runs `parentdeath_exec.py` first (a bare
interpreter: stdlib only, no import of ours), which sets the signal and execs the program; the
signal survives the exec.

The signal comes when the *thread* that forked the child ends, not the process: a child spawned
from any thread but the main one would get SIGTERM when that thread ends, so only the main
thread's children get it (asyncio spawns on its loop's thread: the main one in every command here).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

_EXEC = str(Path(__file__).with_name("parentdeath_exec.py"))


def with_parent_death(argv: Sequence[str], sig: int = signal.SIGTERM) -> list[str]:
    """`argv` run so that its process gets `sig` (SIGTERM: it stops as on Ctrl-C, its own
    children with it) when this process dies: on Linux, from the main thread. Elsewhere, or
    from another thread, `argv` itself. A program not found raises FileNotFoundError here, as
    spawning it directly would."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return list(argv)
    program = shutil.which(argv[0])
    if program is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
    return [sys.executable, "-I", "-S", _EXEC, str(os.getpid()), str(int(sig)), program, *argv[1:]]
