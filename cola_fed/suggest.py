"""'Did you mean ...?': the known names closest to a misspelt one, for error messages.

One helper for every place a user names something from a fixed set (run config keys, node
config keys, choices such as ``strategy.mode``, the modules ``adapter.targets`` names), so that
every such error offers the same kind of hint. Torch-free and import-light.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, options: Iterable[str], *, n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The (up to ``n``) options most like ``word``, best first, by :mod:`difflib`'s ratio.

    Parameters
    ----------
    word : str
        What the user wrote.
    options : iterable of str
        The names that exist (repeats are ignored).
    n : int
        Most suggestions returned.
    cutoff : float
        Least similarity in ``[0, 1]`` an option needs to be suggested; 0.6 catches a swapped
        or missing letter in short names without suggesting unrelated ones.

    Returns
    -------
    list of str
        Empty when nothing is close.
    """
    return difflib.get_close_matches(word, list(dict.fromkeys(options)), n=n, cutoff=cutoff)


def did_you_mean(word: str, options: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` (or ``"'x' or 'y'"`` for ``n > 1``) when some option is close to
    ``word``, else ``""``: ready to append to an error message."""
    names = closest(word, options, n=n, cutoff=cutoff)
    if not names:
        return ""
    return "; did you mean " + " or ".join(repr(name) for name in names) + "?"
