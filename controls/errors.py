"""The one exception type the front end turns into "error: <message>" and exit code 2 (no traceback).

Bad input (a malformed trace, an unknown key name, a config field that cannot work, a session from another
world) is the user's to fix, so it gets a one-line message naming the file, line and field; a traceback
would only bury that line. Bugs and crashes keep their tracebacks.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1      # a regression found by replay check=true, or a recording that could not be written
EXIT_USAGE = 2       # bad input: config, trace, session, mismatch
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input; the message is shown as is and the process exits with EXIT_USAGE."""
