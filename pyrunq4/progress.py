"""Progress bars for the waits that take more than a few seconds (export,
GPTQ, perplexity, long prompts): tqdm on stderr when stderr is a terminal,
nothing when it is not (a log file or a pipe gets no bar) or when quiet."""

import sys

from tqdm import tqdm


def progress_bar(total=None, desc=None, unit="it", quiet=False):
    """A tqdm bar on stderr that disappears when it is closed. quiet=True,
    or stderr not being a terminal, gives a bar that prints nothing."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                dynamic_ncols=True, disable=True if quiet else None)
