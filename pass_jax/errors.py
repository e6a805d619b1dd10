"""One base class for errors a user can fix; the CLI prints them as a single line."""


class PassJaxError(ValueError):
    """Bad input or settings, explained in one line."""
