"""Progress bars that suit where they are shown: a terminal, a notebook, or a log file.

:func:`progress_bar` is tqdm's bar (``tqdm.auto``) on a terminal and in
Jupyter. When stderr is neither (a captured log, a batch job, CI), tqdm would
still redraw its bar with carriage returns, thousands of times per run; there
the bar becomes a few plain lines instead, one at each tenth of the work. Used
by every long loop of voxstats and qsm.
"""

from __future__ import annotations

import sys

from tqdm.std import tqdm as _std_tqdm

__all__ = ["progress_bar"]

_LINE_FORMAT = "{desc}: {percentage:3.0f}% ({n_fmt}/{total_fmt} {unit}) [{elapsed}<{remaining}]"


class _PlainLines(_std_tqdm):
    """tqdm writing one plain line (no carriage return) per tenth of the work, for logs."""

    def __init__(self, *args, **kwargs):
        self._shown = None  # (tenth, description, n) of the last line written
        kwargs.setdefault("mininterval", 0)  # every update is looked at; display() decides
        kwargs.setdefault("miniters", 1)
        super().__init__(*args, **kwargs)

    def _write_line(self):
        meter = dict(self.format_dict, bar_format=_LINE_FORMAT, prefix=(self.desc or "").removesuffix(": "))
        self.fp.write(self.format_meter(**meter) + "\n")
        self.fp.flush()
        self._shown = (int(10 * self.n / self.total) if self.total else 0, self.desc, self.n)

    def display(self, msg=None, pos=None):
        if msg == "" or self.n == 0:  # tqdm clearing a bar, or nothing done yet: no line
            return True
        tenth = int(10 * self.n / self.total) if self.total else 0
        if self._shown is None or self._shown[:2] != (tenth, self.desc):
            self._write_line()
        return True

    def reset(self, total=None):
        self._shown = None
        super().reset(total=total)

    def close(self):
        if self.disable:
            return
        if self.n and (self._shown is None or self._shown[1:] != (self.desc, self.n)):
            self._ema_dt = lambda: None  # the overall rate, as tqdm's last line
            self._write_line()
        self.disable = True
        self._decr_instances(self)


def _stderr_is_terminal():
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress_bar(iterable=None, *, total=None, desc=None, unit="it", disable=False):
    """A progress bar: tqdm on a terminal or in Jupyter, a few plain lines in a log.

    Parameters
    ----------
    iterable : iterable, optional
        Wrapped and iterated, as ``tqdm(iterable)``.
    total : int, optional
        Number of steps (default ``len(iterable)`` when it has one).
    desc, unit : str
        Label before the bar and name of a step ("perm", "subject").
    disable : bool
        No output at all.

    Returns
    -------
    tqdm.tqdm
        Used as tqdm: ``update(n)``, ``set_description``, ``reset``,
        ``close``, context manager, iteration. When stderr is not a terminal
        (and not a notebook), it writes ``desc: 30% (3/10 unit) [00:01<00:02]``
        lines at each tenth of the work instead of redrawing a bar.
    """
    from tqdm.auto import tqdm as auto_tqdm
    from tqdm.autonotebook import tqdm as notebook_or_std

    kwargs = dict(total=total, desc=desc, unit=unit, disable=disable)
    if disable or notebook_or_std is not _std_tqdm or _stderr_is_terminal():
        return auto_tqdm(iterable, **kwargs)
    return _PlainLines(iterable, file=sys.stderr, **kwargs)
