"""One exception type for bad input, so the CLI can print one clear line for it."""


class HusaiError(ValueError):
    """A user-facing problem (bad parameter, missing file, shape mismatch...).

    The message must name the offending thing; the CLI prints it on one line
    and exits non-zero.
    """
