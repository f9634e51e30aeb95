"""The project's error type for problems a user can cause (bad files, bad flags, bad data).

The CLI turns a :class:`MasksfmError` into one line on stderr and exit code 2. Programming errors
stay ordinary exceptions.
"""


class MasksfmError(Exception):
    """A problem with the user's input: the message names the file (or flag) and the problem."""
