"""`epp`: one console script, one subcommand per part of the product.

`epp --flag ...` (the first argument a flag, not a subcommand) runs `epp serve --flag ...`: GIE's and
llm-d's Helm charts start the EPP image with flags only, so the image's entrypoint must serve."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# subcommand -> (module with add_arguments(parser) and run(args) -> int, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("epp.serve", "run the endpoint picker (Envoy ext_proc gRPC service)"),
    "sim": ("epp.sim.cli", "run simulated vLLM-compatible model servers"),
    "run": ("epp.stack.cli", "run Envoy + EPP + simulated model servers on 127.0.0.1"),
    "bench": ("epp.bench.cli", "benchmark routing policies, the two benchmark engines and the EPP overhead"),
    "sidecar": ("epp.sidecar.cli", "run the P/D routing sidecar in front of a decode engine"),
    "config": (
        "epp.config.cli",
        "check an EndpointPickerConfig: print what it resolves to (`epp config check`)",
    ),
}
IMPLIED_COMMAND = "serve"
_HELP = ("-h", "--help")
_LOG_LEVEL = "--log-level"


def resolve(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """(the subcommand, argv with it in place). The subcommand is the first argument after the
    top-level options (`--log-level LEVEL`); if that argument is a flag instead, the command is
    `serve` and is inserted before it. `-h`/`--help` there keep the top-level help."""
    argv = list(argv)
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == _LOG_LEVEL:
            index += 2
        elif arg.startswith(_LOG_LEVEL + "="):
            index += 1
        else:
            break
    if index >= len(argv):
        return None, argv
    first = argv[index]
    if first in SUBCOMMANDS:
        return first, argv
    if first.startswith("-") and first not in _HELP:
        return IMPLIED_COMMAND, [*argv[:index], IMPLIED_COMMAND, *argv[index:]]
    return None, argv


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """Only the chosen subcommand's module is imported, so each command starts fast and a
    problem in one part never breaks the others."""
    parser = argparse.ArgumentParser(
        prog="epp",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(_LOG_LEVEL, default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        chosen = sub.add_parser(
            name,
            help=help_text,
            # `epp serve --workers` hands its command line on to its workers, which must read it
            # as it was meant (`--worker=2` is not `--workers=2` there); GIE's Go flags take no
            # abbreviations either.
            allow_abbrev=name != IMPLIED_COMMAND,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(chosen)
        chosen.set_defaults(_module=module)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """`argv` (without the program name) parsed as `epp` parses it, the implied `serve` included."""
    command, argv = resolve(argv)
    return build_parser(command).parse_args(argv)


class _BadRequestsAreDebug(logging.Filter):
    """aiohttp answers a request it cannot parse (a non-ASCII byte in the URL, a folded header) with
    a 400 and logs it at ERROR with a traceback: any client reaching the EPP's metrics port, the
    sidecar or a simulator could fill an operator's error log (GIE's Go servers log nothing). Such
    a record is kept at DEBUG, the client's error in its message and without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError  # aiohttp is loaded by then

        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError) or not 400 <= error.code < 500:
            return True
        record.msg = f"{record.getMessage()}: {error.code} {error.message}"
        record.args, record.exc_info, record.exc_text = (), None, None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def install_log_filters() -> None:
    """Once a process, before any server starts."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _BadRequestsAreDebug) for f in server.filters):
        server.addFilter(_BadRequestsAreDebug())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install_log_filters()
    return int(args._module.run(args))


def pd_sidecar() -> int:
    """The `pd-sidecar` console script: `epp sidecar` under the name of llm-d's sidecar binary, so
    pods that give `command: [/app/pd-sidecar]` (the image has it there) run with llm-d's args."""
    return main(["sidecar", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
