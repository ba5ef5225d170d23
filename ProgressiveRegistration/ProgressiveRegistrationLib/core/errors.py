"""The one exception type that means "the user's input is wrong".

Everything that reads files, checks images or validates configuration raises
:class:`InputError` with a message meant for a person. The command line turns it into one
line on stderr and exit code 2; the Slicer module shows it in a message box.
"""

from __future__ import annotations

#: Exit code of the command line for bad input (argparse uses the same code).
EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """Bad input: a missing or unreadable file, a wrong dimension, NaNs, mismatched lists."""
