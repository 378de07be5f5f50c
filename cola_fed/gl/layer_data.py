"""What one adapted layer's adaptation data looks like, and how it becomes adapter rows. Torch-free.

Every adapter maps rows ``[n, d_in] -> [n, d_out]``. A linear layer's data already is rows. A
convolution's data travels compact, as the layer's input ``x [B, C_in, H, W]`` and the gradient
at its output ``d [B, C_out, H', W']``: the patches of ``x`` overlap, so sending them unfolded
would repeat every pixel ``kh * kw`` times. The learner unfolds them itself (:func:`to_rows`), in
exactly ``torch.nn.functional.unfold``'s order, so both backends and the server agree on what a
row is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cola_fed.gl.layout import LayerInfo


def output_size(info: LayerInfo, height: int, width: int) -> tuple[int, int]:
    """Spatial size of a convolution's output for an input of ``height x width``."""
    sizes = []
    for size, k, s, p, dil in zip((height, width), info.kernel_size, info.stride, info.padding,
                                  info.dilation):
        sizes.append((size + 2 * p - dil * (k - 1) - 1) // s + 1)
    return sizes[0], sizes[1]


def shape_error(info: LayerInfo, x_shape: tuple[int, ...], d_shape: tuple[int, ...],
                *, has_rows: bool) -> str | None:
    """Why ``x`` and ``d`` of these shapes are not adaptation data of layer ``info``, or None.

    ``has_rows``: the layer names its rows of a shared ``x`` (then ``x`` and ``d`` may differ in
    their first dimension).
    """
    if info.is_conv2d:
        expected = (f"x [B, {info.in_channels}, H, W] and d [B, {info.d_out}, H', W'] "
                    f"(kernel {info.kernel_size}, stride {info.stride}, padding {info.padding}, "
                    f"dilation {info.dilation})")
        ok = (len(x_shape) == 4 and len(d_shape) == 4 and x_shape[1] == info.in_channels
              and d_shape[1] == info.d_out)
        ok = ok and tuple(d_shape[2:]) == output_size(info, x_shape[2], x_shape[3]) and min(
            d_shape[2:]) >= 1
    else:
        expected = f"x [n, {info.d_in}] and d [n, {info.d_out}]"
        ok = (len(x_shape) == 2 and len(d_shape) == 2 and x_shape[1] == info.d_in
              and d_shape[1] == info.d_out)
    if ok and not has_rows and x_shape[0] != d_shape[0]:
        ok = False
    if ok:
        return None
    return f"layer {info.name!r}: expected {expected}, got {list(x_shape)} and {list(d_shape)}"


def unfolded_values(info: LayerInfo, x_shape: tuple[int, ...]) -> int:
    """How many values unfolding a convolution input of ``x_shape`` materialises: the padded
    copy and the rows. Overlapping patches make this far larger than the compact data (each
    input value lands in up to ``kh * kw`` rows), so a node bounds it before it unfolds."""
    b, c, h, w = x_shape
    (ph, pw), (h_out, w_out) = info.padding, output_size(info, h, w)
    return b * c * (h + 2 * ph) * (w + 2 * pw) + b * max(h_out, 0) * max(w_out, 0) * info.d_in


def unfold(x: np.ndarray, info: LayerInfo) -> np.ndarray:
    """The receptive field of every output position of a convolution, as rows
    ``[B * H' * W', C_in * kh * kw]`` (sample, then output row, then output column)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (info.kernel_size, info.stride, info.padding,
                                              info.dilation)
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = np.lib.stride_tricks.sliding_window_view(
        padded, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # [B, C, H', W', kh, kw]
    b, c, h_out, w_out = windows.shape[:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(b * h_out * w_out, c * kh * kw)


def to_rows(info: LayerInfo, x: Any, d: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(x, d)`` of one layer as adapter rows ``[n, d_in]`` and ``[n, d_out]``."""
    x, d = np.asarray(x), np.asarray(d)
    if not info.is_conv2d:
        return x, d
    return unfold(x, info), d.transpose(0, 2, 3, 1).reshape(-1, info.d_out)
