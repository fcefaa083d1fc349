"""Curvature of the loss: matrix-free products with H, G (Gauss-Newton) and the NME."""

from nme_train.curvature.products import gvp, hvp, output_hvp, tree_dot, tree_norm

__all__ = ["gvp", "hvp", "output_hvp", "tree_dot", "tree_norm"]
