"""The errors a user can act on: their messages name the problem and the fix."""

from __future__ import annotations


class UserError(Exception):
    """A bad config, run directory, checkpoint or disk: the message says what to do, so the
    command line prints it alone (no traceback) and the Ray driver raises it out of Ray's
    wrappings."""
