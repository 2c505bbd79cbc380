"""voxstats: voxel-wise permutation inference with exact TFCE.

The engine knows nothing of any imaging modality: it takes a data matrix or
images, a design and contrasts, and returns statistic and p-value maps.

The public names below are imported on first use, so that ``import voxstats``
(and ``voxstats --help``) does not pay for numba, SciPy and pandas.
"""

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "Contrast": "design",
    "ContrastResult": "randomise",
    "Design": "design",
    "ExchangeabilityTree": "exchangeability",
    "PermutationSchedule": "permutation",
    "RandomiseResult": "randomise",
    "RunInterrupted": "checkpoint",
    "compile_in_background": "precompile",
    "make_contrasts": "design",
    "make_design": "design",
    "make_schedule": "permutation",
    "permuted_glm": "randomise",
    "randomise": "randomise",
    "tfce": "tfce",
}

__all__ = sorted(_EXPORTS)


class _Package(types.ModuleType):
    """The package module: public names resolved lazily.

    ``voxstats.randomise`` and ``voxstats.tfce`` are both functions and
    submodules. Importing a submodule binds it as an attribute of its package;
    that binding is skipped for these names, so the attribute stays the
    function (as it was when the package imported everything eagerly).
    """

    def __getattr__(self, name):
        if name not in _EXPORTS:
            raise AttributeError(f"module 'voxstats' has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_EXPORTS))


sys.modules[__name__].__class__ = _Package
