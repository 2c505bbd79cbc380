"""Errors and warnings about many subjects or files: a count, a few examples, the full list.

A cohort of 240 subjects with a wrong ``units`` makes every map implausible;
an error naming them all, with full paths, is a 50 KB line nobody reads.
:class:`ListedError` keeps the message short (the count and the first
:data:`N_EXAMPLES` items) and carries the full list in ``items``; ``qsm``'s
command line writes that list to ``qsm.log`` in the output folder and names
the file in the one-line error. :func:`log_listed` does the same for a
warning: a short console line, the full list at INFO level (``qsm.log``).
"""

from __future__ import annotations

import logging

__all__ = ["N_EXAMPLES", "ListedError", "summarize", "counted", "log_listed"]

#: Items shown in a message; the rest are counted.
N_EXAMPLES = 3


def summarize(items, *, sep: str = "; ", n: int = N_EXAMPLES) -> str:
    """``"a; b; c and 237 more"``: the first *n* items and how many are left out."""
    items = [str(i) for i in items]
    shown = sep.join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def counted(n: int, noun: str = "subject(s)") -> str:
    """``"240 subject(s): "`` before a list that :func:`summarize` shortens, else ``""``."""
    return f"{n} {noun}: " if n > N_EXAMPLES else ""


class ListedError(ValueError):
    """A ValueError about several subjects or files, short whatever their number.

    Parameters
    ----------
    head : str
        Text before the list, stating the count (``"... for 240 of 240 subject(s): "``).
    items : sequence of str
        One entry per subject or file; all of them are kept in ``items``.
    tail : str
        Text after the list (advice), default ``"."``.
    sep : str
        Separator between the items shown.

    Notes
    -----
    ``str(error)`` is ``head + first items + " and N more" + tail`` when there are
    more than :data:`N_EXAMPLES` items, else ``head + all items + tail``.
    """

    def __init__(self, head: str, items, tail: str = ".", *, sep: str = "; "):
        self.items = tuple(str(i) for i in items)
        self.head, self.tail, self.sep = head, tail, sep
        super().__init__(head + summarize(self.items, sep=sep) + tail)

    def full_text(self) -> str:
        """The message with every item, one per line (for a log file)."""
        return (f"{self.head.rstrip(': ')}:\n"
                + "\n".join(f"  {i}" for i in self.items))


def log_listed(logger: logging.Logger, level: int, message: str, items, *, sep=", ") -> None:
    """Log *message* with a summary of *items*; the full list follows at INFO level.

    *message* is a %-format with one ``%s`` for the list.
    """
    items = [str(i) for i in items]
    logger.log(level, message, summarize(items, sep=sep)
               + (" (full list in the log)" if len(items) > N_EXAMPLES else ""))
    if len(items) > N_EXAMPLES:
        logger.info((message % "") + f"all {len(items)}:\n" + "\n".join(f"  {i}" for i in items))
