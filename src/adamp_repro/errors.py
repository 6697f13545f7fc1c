"""Errors meant for the person at the keyboard: the command line prints them as one line and exits with 2.

``UsageError`` is a value or a state the user can fix (a bad config value, a run folder held by another
process, a resume refused after a code change); anything else is a bug or a fault and keeps its traceback.
"""

from __future__ import annotations


class UsageError(Exception):
    """A problem the user can fix; its message names the bad value and what is allowed."""

    exit_status = 2


class ConfigError(UsageError, ValueError):
    """A config value that is refused before any work starts."""
