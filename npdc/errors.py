"""The one exception type that means "the user asked for something impossible".

The CLI turns a UserError into a single line on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input: a missing file, an unknown name, a wrong shape."""
