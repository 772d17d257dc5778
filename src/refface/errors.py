"""The one exception type users see: its message is a single sentence naming the problem and the file."""


class RefFaceError(Exception):
    """A problem with the user's input, files or environment, explained in one sentence.

    The CLI prints the message without a traceback and exits non-zero; library users can catch
    this one type to tell bad input apart from bugs.
    """
