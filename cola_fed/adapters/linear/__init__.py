"""Linear: ``g(x) = x W^T (+ b)``, zero-initialised.

ColA Linear is full fine-tuning of the targeted matrices; with a bias it also adapts a frozen
task head. On a convolution it is a zero-initialised convolution of the layer's own shape.
"""

from cola_fed.adapters.linear.family import Linear

__all__ = ["Linear"]
