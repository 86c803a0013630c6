"""The core's one error class: bad usage or input, found before work starts.

The core raises it (an unknown body, weights that do not fit) with a message naming the flag or
file; the face (`raycat/cli.py`) turns it into exit 2. `raycat/errors.py` re-exports it for the
rest of the shell, so one class is caught everywhere.
"""

from __future__ import annotations


class BadInput(ValueError):
    """Bad usage or input, found before work starts: exit 2, the message names the flag, file or folder."""
