"""Errors that name the parameter (or command-line flag) they are about.

A library function raises :class:`ParameterError` with the name of its own
parameter (``mask_img``, ``atlas_img``, ``tfce_dh``); ``str(error)`` reads
``"mask_img: the mask is empty"``. The command line catches it and prints the
same message with its flag instead (``-m: the mask is empty``), so that a user
of ``voxstats randomise`` never sees a Python parameter name.
"""

__all__ = ["MissingFileError", "ParameterError"]


class ParameterError(ValueError):
    """A bad value for one parameter.

    Parameters
    ----------
    param : str
        The parameter's name in the Python API (``"mask_img"``).
    message : str
        What is wrong, without the parameter's name (``"file not found: x.nii"``).

    Notes
    -----
    ``str(error)`` is ``"<param>: <message>"``; :meth:`renamed` gives the same
    text under another name (a command-line flag).
    """

    def __init__(self, param, message):
        self.param = param
        self.message = message
        super().__init__(f"{param}: {message}")

    def renamed(self, names):
        """The message with ``param`` replaced by ``names[param]`` (kept when absent)."""
        return f"{names.get(self.param, self.param)}: {self.message}"


class MissingFileError(FileNotFoundError):
    """A file named by a parameter does not exist (a FileNotFoundError).

    ``str(error)`` is ``"<param>: file not found: <path>"``; :meth:`renamed`
    as for :class:`ParameterError`.
    """

    def __init__(self, param, path):
        self.param = param
        self.path = str(path)
        self.message = f"file not found: {path}"
        super().__init__(f"{param}: {self.message}")

    renamed = ParameterError.renamed
