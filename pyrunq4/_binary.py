"""The `runq4` console script: runs the C binary shipped inside the package
(pyrunq4/bin/runq4, built by setup.py from cli/ and src/) with the same
arguments; exec replaces this process, so the exit status, signals and
stdin/stdout are the binary's own."""

import os
import sys

BINARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "runq4")


def main():
    if not os.access(BINARY, os.X_OK):
        print(f"runq4: error: {BINARY} is missing (reinstall pyrunq4: pip install .)", file=sys.stderr)
        return 1
    os.execv(BINARY, ["runq4"] + sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
