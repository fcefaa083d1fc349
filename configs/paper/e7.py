"""E7: the toy landscape of one datapoint: loss and NME over a 2-D slice of two hidden weights.

Paper's finding: the NME concentrates at the boundaries of the ReLU
network's linear regions; for beta-GELU it lives within about 1/beta of
them, and for ReLU it is zero everywhere except on them.

Not a training sweep: drawn by `python tools/toy_landscape.py` (which reads
this file). The model: a one-hidden-layer MLP f(x) = w2 . sigma(W1 x + b1) + b2
with `width` units, random weights (`seed`), one datapoint (`x`, `y`) and the
squared error (f(x) - y)^2. The slice varies W1[0, 0] and W1[0, 1] (the
weights of input 0 into hidden units 0 and 1) over [-extent, extent]^2 with
the other weights fixed, so the region boundaries (pre-activation of unit 0
or 1 equal to 0) are a vertical and a horizontal line. At each point the
tool computes the loss and the Frobenius norm of the NME block of the
first-layer parameters (W1, b1): there the NME is made of sigma'' terms only.
"""

import ml_collections

SCALES = ("toy",)


def get_config(arg: str = "toy"):
    if arg != "toy":
        raise ValueError(f"E7 has one scale, 'toy' (got {arg!r})")
    c = ml_collections.ConfigDict()
    c.width = 4
    c.x = (1.0, -0.5)
    c.y = 1.0
    c.seed = 0
    c.extent = 2.0
    c.resolution = 241
    c.activations = ("relu", "beta_gelu:1", "beta_gelu:4", "beta_gelu:16")
    c.band = 3.0  # report the share of the NME norm within band/beta of a region boundary
    return c
