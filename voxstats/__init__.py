"""voxstats: voxel-wise permutation inference with exact TFCE.

The engine knows nothing of any imaging modality: it takes a data matrix or
images, a design and contrasts, and returns statistic and p-value maps.
"""

__version__ = "0.1.0"
