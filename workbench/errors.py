"""Errors the user can act on. The CLI prints their message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input: the message names the file or field and says what to do."""


class StudyError(UserError):
    """A site refused or failed a study; the message names the site and the reason."""
