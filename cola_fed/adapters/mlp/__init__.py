"""MLP: ``d_in -> hidden ... -> d_out`` with a zero-initialised last layer.

Not linear in ``x``, so it cannot be merged. On a convolution it runs per output position on the
receptive field: a ``k x k`` convolution to the first hidden layer, then ``1 x 1`` convolutions.
"""

from cola_fed.adapters.mlp.family import MLP

__all__ = ["MLP"]
