"""`epp`: one console script, one subcommand per part of the product."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

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


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """Only the chosen subcommand's module is imported, so each command starts fast and a
    problem in one part never breaks the others."""
    parser = argparse.ArgumentParser(prog="epp", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        chosen = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(chosen)
        chosen.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if a in SUBCOMMANDS), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args._module.run(args))


if __name__ == "__main__":
    sys.exit(main())
