"""One base class for errors a user can fix; the CLI prints them as a single line."""


class PassJaxError(ValueError):
    """Bad input or settings, explained in one line."""


def root_reason(err: BaseException) -> str:
    """The first line of the innermost cause: what went wrong, without the wrappers' decoration."""
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err).splitlines()[0] if str(err) else type(err).__name__
