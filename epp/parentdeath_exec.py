"""Run as `python -I -S parentdeath_exec.py PARENT_PID SIGNAL PROGRAM [ARG...]` (by
`epp.parentdeath.with_parent_death`, in a child spawned without a preexec_fn): set the signal this
process gets when its parent dies, then become PROGRAM. Stdlib only and a bare interpreter, so it
costs a child a few milliseconds.

If the parent already died (the signal would never come) it exits at once. A prctl that fails (a
seccomp profile's EPERM) is said on stderr and the program runs anyway: only the SIGKILL case is
lost, and refusing would keep `epp run` and `--workers` from starting wherever prctl is denied."""

import ctypes
import os
import sys

# prctl(2)'s option: the signal a process gets when the thread that forked it ends.
PR_SET_PDEATHSIG = 1


def main(parent: int, signum: int, argv: list[str]) -> None:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    if prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
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
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
