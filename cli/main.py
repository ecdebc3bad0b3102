"""The ``vitamin`` command line: one sub-command per job, each in its own module.

A sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int``.  Modules
are imported only when their command runs, so ``vitamin --help`` stays fast.  Expected
failures (bad input, a config that does not fit, a damaged file) are raised as
:class:`UserError` or one of :data:`USER_ERRORS` and printed as one line with exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


#: command name -> (module, one-line help)
COMMANDS = {
    "quantize": ("cli.quantize", "quantize a timm ViT/DeiT into an integer graph (.npz)"),
    "run": ("cli.run", "integer inference of an integer graph; prints the top-5 classes"),
    "evaluate": ("cli.evaluate", "top-1 / top-5 of an integer graph, its fake-quant and float model on an image folder"),
    "accuracy": ("cli.accuracy", "train a ViT on digits and print the quantization accuracy table (--method: compare methods)"),
    "verilog": ("cli.verilog", "write the Verilog of one hardware unit"),
    "compile": ("cli.compile", "compile an integer graph into an accelerator program"),
    "disasm": ("cli.disasm", "disassemble a program binary"),
    "simulate": ("cli.simulate", "cycle-level simulation: latency, MAC utilization, stalls"),
    "cosim": ("cli.cosim", "run a compiled model on the accelerator's RTL (cocotb + Verilator)"),
    "build": ("cli.build", "fit the accelerator to a board; place and route (ECP5) or write its Verilog"),
}


def _user_errors() -> tuple[type[BaseException], ...]:
    from hw.config import ConfigError
    from sw.graph import GraphFormatError
    from sw.intops import IntegerOverflowError
    return (UserError, ConfigError, GraphFormatError, IntegerOverflowError, FileNotFoundError)


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="vitamin", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers = {}
    for name, (_, help_) in COMMANDS.items():
        subparsers[name] = sub.add_parser(name, help=help_, description=help_)
    return parser, subparsers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, subparsers = build_parser()
    # Import only the chosen command's module, then let it declare its arguments.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    if chosen in COMMANDS:
        module = importlib.import_module(COMMANDS[chosen][0])
        module.add_arguments(subparsers[chosen])
    args = parser.parse_args(argv)
    # SIGTERM (kill, a CI timeout) stops a command the way Ctrl-C does: tools it started are
    # killed and half-written output is set aside (e.g. a build's folder becomes
    # ``<key>.failed``), instead of the process vanishing mid-write.
    previous = _on_sigterm(_interrupt)
    try:
        return int(module.run(args) or 0)
    except _user_errors() as exc:
        print(f"vitamin {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitamin {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _on_sigterm(previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _on_sigterm(handler):
    """Install ``handler`` for SIGTERM (the main thread only); returns the previous one."""
    import signal
    import threading
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    # Under ``python -m cli.main`` this file is ``__main__``; re-import it as ``cli.main`` so
    # that command modules share one ``UserError`` class with the dispatcher.
    from cli.main import main as _main
    sys.exit(_main())
