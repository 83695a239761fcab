"""Errors the user can fix: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input or configuration; the message names the file, field or value and the fix."""
