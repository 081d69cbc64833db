"""What the command lines (generate, eval) share: argparse that reports a bad
flag as one line and exit status 1, integer flag types, and one main() wrapper
mapping known errors to that one line, a closed pipe to a quiet exit."""

from __future__ import annotations

import argparse
import os
import sys

from .errors import Runq4Error, UsageError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" except where the help text already says it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with errors as one line and exit status 1."""

    def error(self, message):
        raise UsageError(message)


def add_version(parser):
    """--version: the package's version (RQ4_VERSION of src/runq4.h)."""
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def run_main(prog, parser, run, argv=None, known_errors=()):
    """Parses argv and calls run(args); returns the exit status: 0, 1 for a
    known error (one line on stderr), 130 on Ctrl-C. A reader that went away
    (| head -c 20) ends the run quietly."""
    try:
        return run(parser.parse_args(argv))
    except BrokenPipeError:
        # point stdout at /dev/null so the interpreter's final flush does not fail again
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except (UsageError, Runq4Error, OSError, *known_errors) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
