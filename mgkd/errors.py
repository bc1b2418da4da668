"""The one exception type for errors a user can cause (config, data, paths, servers)."""


class MgkdError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do.

    The CLI prints it without a traceback and exits with code 2; tracebacks are
    kept for bugs.
    """
