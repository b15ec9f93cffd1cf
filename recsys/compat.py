"""The one place that makes ``recbole==1.2.1`` work with numpy 2 and torch >= 2.6.

RecBole 1.2.1 still uses numpy aliases removed in numpy 2 (``np.float_``, ``np.complex_``,
``np.unicode_``, ``np.bool8``); they are restored before RecBole is imported. RecBole's ``Config`` reads
``sys.argv``; :func:`recbole_argv_isolated` hides ours while one is built. Nothing here patches
RecBole or torch functions.
"""

from __future__ import annotations

import contextlib
import sys
import warnings

import numpy as np

_NUMPY_ALIASES = {"float_": "float64", "complex_": "complex128", "unicode_": "str_", "bool8": "bool_"}


def apply() -> None:
    """Restore the numpy aliases RecBole 1.2.1 needs (idempotent)."""
    for old, new in _NUMPY_ALIASES.items():
        if not hasattr(np, old):
            setattr(np, old, getattr(np, new))
    # RecBole 1.2.1 uses pandas' chained in-place fillna, which pandas 2.x warns about on every load.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")


@contextlib.contextmanager
def recbole_argv_isolated():
    """RecBole's ``Config`` parses ``sys.argv`` for ``--key=value`` pairs; ours are not for it.

    Hide the program's own arguments while a RecBole ``Config`` is built, so ``persona`` flags never
    leak into RecBole's configuration.
    """
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved
