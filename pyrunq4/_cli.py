"""What the command lines (generate, eval) share: argparse that reports a bad
flag as one line and exit status 1, integer flag types, and one main() wrapper
mapping known errors to that one line, a closed pipe to a quiet exit."""

from __future__ import annotations

import argparse
import errno
import os
import stat
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


def _std_streams():
    """A closed stdin reads as empty and a closed stderr discards (each gets
    /dev/null, so that no file the program opens later takes descriptor 0 or
    2 and is read or written as if it were the terminal); a closed stdout is
    a UsageError, since everything printed would be lost."""
    for fd, mode in ((0, os.O_RDONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, mode)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, "stdin" if fd == 0 else "stderr", open(fd, "r" if fd == 0 else "w", closefd=False))
    try:
        os.fstat(1)
    except OSError:
        raise UsageError("standard output is closed: the output would be lost") from None
    if sys.stdout is None:
        raise UsageError("standard output is closed: the output would be lost")


def _silence_stdout():
    """Points stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def read_text_file(path):
    """The UTF-8 text of a regular file. A FIFO, a device or a directory is a
    UsageError (reading one could wait forever or never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UsageError(f"{path}: a loop of symbolic links") from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{path}: not a regular file")
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def run_main(prog, parser, run, argv=None, known_errors=()):
    """Parses argv and calls run(args); returns the exit status: 0, 1 for a
    known error (one line on stderr), 130 on Ctrl-C. A reader that went away
    (| head -c 20) ends the run quietly; any other failure to write the
    output (a full disk) is an error, as output lost is not success."""
    try:
        _std_streams()
        status = run(parser.parse_args(argv))
        flush_output()
        return status
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except (UsageError, Runq4Error, OSError, *known_errors) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


class OutputError(UsageError):
    """Writing stdout failed (a full disk, an I/O error): the output is lost."""


def write_output(text=None):
    """Writes text to stdout and flushes it. A reader that went away raises
    BrokenPipeError (a quiet end); any other failure is an OutputError."""
    try:
        if text:
            sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        _silence_stdout()
        raise OutputError(f"writing the output failed: {e.strerror or e}") from None


def flush_output():
    write_output(None)
