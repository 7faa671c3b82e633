"""The project's error hierarchy.

A ``UserError`` is the caller's fault (bad flag, bad data, bad name): the command line prints
``error: <message>`` and exits with status 2. Anything else is an internal failure (status 1).
"""


class BnserveError(Exception):
    """Base of every error bnserve raises on purpose."""


class UserError(BnserveError):
    """Bad input from the user; the message names the field and what was expected."""
