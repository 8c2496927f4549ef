"""The one exception type for bad user input; the CLI prints it as a single line."""


class ReadtalkError(ValueError):
    """A problem with the user's input or environment, explained in one line.

    Library code raises it for anything a user can fix (missing files, wrong formats, sizes the
    model cannot take). ``readtalk`` on the command line prints ``error: <message>`` and exits
    with status 2 instead of showing a traceback.
    """


class ReadtalkWarning(UserWarning):
    """Something the user should know that does not stop the work (a portrait unlike the
    model's training faces, say); ``readtalk`` on the command line prints it as one line,
    ``warning: <message>``."""


class PortraitWarning(ReadtalkWarning):
    """The portrait is unlike the faces the model was trained on (``Pipeline.portrait_fit``)."""
