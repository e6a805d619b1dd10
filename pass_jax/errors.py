"""One base class for errors a user can fix; the CLI prints them as a single line."""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator


class PassJaxError(ValueError):
    """Bad input or settings, explained in one line."""


def root_reason(err: BaseException) -> str:
    """The first line of the innermost cause: what went wrong, without the wrappers' decoration."""
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err).splitlines()[0] if str(err) else type(err).__name__


# What an abandoned Orbax read reports: TensorStore's error, its callback meeting a closed event loop,
# or asyncio noting a failed future that nobody awaited.
ABANDONED_READ_MESSAGES = ("Encountered error while reading array index", "Event loop is closed",
                           "exception was never retrieved")


def _abandoned_read(text: str) -> bool:
    return any(message in text for message in ABANDONED_READ_MESSAGES)


@contextlib.contextmanager
def quiet_abandoned_reads() -> Iterator[None]:
    """Orbax restores a checkpoint's arrays concurrently; when one read fails, the others are abandoned
    and finish later, up to interpreter exit, each reported with its traceback after the one-line
    error: as an unraisable exception, or by asyncio's logger ("exception was never retrieved"). Drop
    those reports (for the rest of the process if the restore failed: they keep arriving); every
    other report goes where it went before."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if not _abandoned_read(str(unraisable.exc_value)):
            previous(unraisable)

    def keep(record: logging.LogRecord) -> bool:
        return not _abandoned_read(record.getMessage())

    asyncio_log = logging.getLogger("asyncio")
    sys.unraisablehook = hook
    asyncio_log.addFilter(keep)
    yield  # an exception raised in the block propagates from here and leaves both in place
    sys.unraisablehook = previous
    asyncio_log.removeFilter(keep)
