"""The project's error type for problems a user can cause (bad files, bad flags, bad data), and its
one-line warnings.

The CLI turns a :class:`MasksfmError` into one line on stderr and exit code 2 (`--debug` shows the
traceback instead). Programming errors stay ordinary exceptions.
"""

import sys


class MasksfmError(Exception):
    """A problem with the user's input: the message names the file (or flag) and the problem."""

    exit_code = 2
    label = "error"  # what the CLI's line starts with: "masksfm: error: ..."


class TrainingInterrupted(MasksfmError):
    """SIGINT / SIGTERM stopped a training run after a checkpoint was saved.

    The exit code is the shell's for a death by that signal (128 + N), so a job scheduler sees the
    job as interrupted, not finished.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
        self.label = "stopped"


def one_line(error: BaseException) -> str:
    """The message of an error as one line.

    A MasksfmError raised in a DataLoader worker comes back re-raised with the worker's whole
    traceback in its message ("Caught MasksfmError in DataLoader worker process 0 ... Original
    Traceback ..."); its last line holds the original message.
    """
    text = str(error).strip()
    if "Traceback (most recent call last)" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith(("masksfm.errors.", "MasksfmError")) else last
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def warn(message: str) -> None:
    """Tell the user something went a way they may not expect (stderr, one line)."""
    print(f"masksfm: warning: {message}", file=sys.stderr)
