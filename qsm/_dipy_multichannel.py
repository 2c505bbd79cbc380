"""A two-channel local cross-correlation metric for dipy's SyN (structural and χ together).

dipy's :class:`~dipy.align.imwarp.SymmetricDiffeomorphicRegistration` drives
one deformation with one metric on one pair of images. :class:`TwoChannelCC`
is a :class:`~dipy.align.metrics.SimilarityMetric` that the optimiser sees as
usual (it hands it the first channel, warped, at each iteration), and that
also warps a second channel pair with the *same* transformations, through the
public "image dynamics" hooks of the metric API, and returns the weighted sum
of the two channels' CC update fields and energies. The result is one
deformation driven by both contrasts, as in multichannel ANTs SyN
(``antsRegistration`` with two ``--metric CC`` terms per stage), which the MULTI
templates of Hanspach et al. (2017, JMRI 46:1474, doi:10.1002/jmri.25671) used
for structural + χ registration.

The second channel is smoothed per pyramid level by its own
:class:`~dipy.align.scalespace.ScaleSpace` built with the optimiser's
parameters (levels, sigma factor), so both channels see the same scale.
"""

from __future__ import annotations

import numpy as np
from dipy.align.imwarp import get_direction_and_spacings
from dipy.align.metrics import CCMetric, SimilarityMetric
from dipy.align.scalespace import ScaleSpace

__all__ = ["TwoChannelCC"]


class TwoChannelCC(SimilarityMetric):
    """Weighted sum of two CC metrics sharing one deformation.

    Parameters
    ----------
    static2, moving2 : 3D ndarray
        The second channel (e.g. χ) on the same grids as the first channel's
        static and moving images.
    static_grid2world, moving_grid2world : (4, 4) ndarray
        Their voxel-to-world affines (as passed to ``optimize``).
    levels : int
        Number of pyramid levels of the optimiser (``len(level_iters)``).
    weights : (float, float)
        Weights of the first and second channel (normalised to sum to 1).
    sigma_diff, radius : float, int
        As in :class:`dipy.align.metrics.CCMetric`.
    ss_sigma_factor : float
        The optimiser's scale-space smoothing factor (dipy's default 0.2).
    """

    def __init__(self, static2, moving2, static_grid2world, moving_grid2world, *, levels,
                 weights=(0.5, 0.5), sigma_diff=2.0, radius=4, ss_sigma_factor=0.2):
        super().__init__(3)
        total = float(sum(weights))
        if total <= 0 or min(weights) < 0:
            raise ValueError(f"Invalid value for the 'weights' parameter: expected two "
                             f"non-negative numbers with a positive sum, got {weights!r}.")
        self.weights = (weights[0] / total, weights[1] / total)
        self.first = CCMetric(3, sigma_diff=sigma_diff, radius=radius)
        self.second = CCMetric(3, sigma_diff=sigma_diff, radius=radius)
        self._ss = {}
        for side, image, g2w in (("static", static2, static_grid2world),
                                 ("moving", moving2, moving_grid2world)):
            _, spacing = get_direction_and_spacings(np.asarray(g2w, float), 3)
            self._ss[side] = ScaleSpace(np.ascontiguousarray(image, dtype=np.float64), levels,
                                        image_grid2world=np.asarray(g2w, float),
                                        input_spacing=spacing, sigma_factor=ss_sigma_factor,
                                        mask0=False)
        self.radius = radius

    # -- the optimiser's hooks ------------------------------------------------------------
    def set_levels_below(self, levels):
        super().set_levels_below(levels)
        self.first.set_levels_below(levels)
        self.second.set_levels_below(levels)

    def set_levels_above(self, levels):
        super().set_levels_above(levels)
        self.first.set_levels_above(levels)
        self.second.set_levels_above(levels)

    def set_static_image(self, static_image, static_affine, static_spacing, static_direction):
        super().set_static_image(static_image, static_affine, static_spacing, static_direction)
        self.first.set_static_image(static_image, static_affine, static_spacing,
                                    static_direction)

    def set_moving_image(self, moving_image, moving_affine, moving_spacing, moving_direction):
        super().set_moving_image(moving_image, moving_affine, moving_spacing, moving_direction)
        self.first.set_moving_image(moving_image, moving_affine, moving_spacing,
                                    moving_direction)

    def _warped_second(self, side, transformation, like):
        """The second channel at the current level, warped as the optimiser warped the first."""
        image = self._ss[side].get_image(self.levels_above)
        grid2world = self.static_affine if side == "static" else self.moving_affine
        return np.asarray(transformation.transform(image, interpolation="linear",
                                                   image_world2grid=None,
                                                   out_shape=np.asarray(like.shape),
                                                   out_grid2world=grid2world),
                          dtype=like.dtype)

    def use_static_image_dynamics(self, original_static_image, transformation):
        warped = self._warped_second("static", transformation, self.static_image)
        self.second.set_static_image(warped, self.static_affine, self.static_spacing,
                                     self.static_direction)

    def use_moving_image_dynamics(self, original_moving_image, transformation):
        warped = self._warped_second("moving", transformation, self.moving_image)
        self.second.set_moving_image(warped, self.moving_affine, self.moving_spacing,
                                     self.moving_direction)

    def initialize_iteration(self):
        self.first.initialize_iteration()
        self.second.initialize_iteration()

    def free_iteration(self):
        self.first.free_iteration()
        self.second.free_iteration()

    def compute_forward(self):
        w1, w2 = self.weights
        return (w1 * np.asarray(self.first.compute_forward())
                + w2 * np.asarray(self.second.compute_forward()))

    def compute_backward(self):
        w1, w2 = self.weights
        return (w1 * np.asarray(self.first.compute_backward())
                + w2 * np.asarray(self.second.compute_backward()))

    def get_energy(self):
        w1, w2 = self.weights
        return w1 * self.first.get_energy() + w2 * self.second.get_energy()
