"""Children that end with their parent, even one killed with SIGKILL (which runs no cleanup).

On Linux a child can ask for a signal when its parent dies: prctl(PR_SET_PDEATHSIG). Setting it in
a `preexec_fn` made CPython fork() the whole parent instead of vfork(): in a parent with gRPC
loaded, gRPC's fork handlers restarted its poller in the child, whose epoll descriptor
`close_fds` then closed before exec, so the child aborted ("epoll_wait error: Bad file
descriptor", SIGABRT; or SIGSEGV) before its program ever ran, about one spawn in six under gRPC
traffic. Instead the child runs this file first (a bare interpreter, `-I -S`: stdlib only, no
import of ours): it sets the signal on itself and execs the program, which keeps it.

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

# prctl(2)'s option: the signal a process gets when the thread that forked it ends.
_PR_SET_PDEATHSIG = 1


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
    return [sys.executable, "-I", "-S", __file__, str(os.getpid()), str(int(sig)), program, *argv[1:]]


def _exec_with_parent_death(parent: int, signum: int, argv: list[str]) -> None:
    """In the child: set the signal, leave at once if the parent already died (the signal would
    never come), then become the program. A prctl that fails (a seccomp profile's EPERM) is said
    on stderr and the program runs anyway: only the SIGKILL case is lost, and refusing would keep
    `epp run` and `--workers` from starting wherever prctl is denied."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    if prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        error = os.strerror(ctypes.get_errno())
        print(
            f"epp: prctl(PR_SET_PDEATHSIG, {signum}) failed ({error}): this process will not "
            "stop if its parent is killed with SIGKILL",
            file=sys.stderr,
            flush=True,
        )
    if os.getppid() != parent:
        sys.exit(1)
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        print(f"epp: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        sys.exit(127)


if __name__ == "__main__":
    _exec_with_parent_death(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
