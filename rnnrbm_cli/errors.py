"""The one exception type the command line turns into a clean message and exit code 1."""


class RnnrbmError(Exception):
    """A runtime failure a user can act on: network, checksum, unreadable or foreign file.

    The message is one sentence saying what went wrong and what to do; the CLI prints it
    without a traceback and exits 1.
    """


class RnnrbmUsageError(RnnrbmError):
    """A request that cannot be honoured as asked (e.g. ``--device cuda`` without CUDA).

    The CLI prints the sentence and exits 2, as for any usage error.
    """
