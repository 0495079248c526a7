"""Errors tribunal raises on purpose, with messages meant for the user."""


class TribunalError(Exception):
    """An error with a one-line message meant for the user."""
