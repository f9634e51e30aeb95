"""Progress bars for long work: on a terminal only, so logs and pipes get no carriage-return noise
and an error on stderr stays one line."""

from __future__ import annotations

import sys


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
                 initial: int = 0, leave: bool = True):
    """A tqdm bar on stderr (rate and ETA included); silent when disabled or stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=sys.stderr,
                dynamic_ncols=True, disable=None if enabled else True)
