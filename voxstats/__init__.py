"""voxstats: voxel-wise permutation inference with exact TFCE.

The engine knows nothing of any imaging modality: it takes a data matrix or
images, a design and contrasts, and returns statistic and p-value maps.
"""

from .checkpoint import RunInterrupted
from .design import Contrast, Design, make_contrasts, make_design
from .permutation import PermutationSchedule, make_schedule
from .randomise import ContrastResult, RandomiseResult, permuted_glm, randomise
from .tfce import tfce

__version__ = "0.1.0"

__all__ = [
    "Contrast",
    "ContrastResult",
    "Design",
    "PermutationSchedule",
    "RandomiseResult",
    "RunInterrupted",
    "make_contrasts",
    "make_design",
    "make_schedule",
    "permuted_glm",
    "randomise",
    "tfce",
]
