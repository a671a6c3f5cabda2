"""Inflate a 2D CNN into a 3D one (I3D, Carreira and Zisserman 2017), so that a video network starts from
image weights.

Each chosen 2D convolution becomes a 3D one whose kernel is the 2D kernel repeated `time_kernel` times
along time and divided by `time_kernel`. The network keeps working on frames stacked in the batch,
(B*T, C, H, W), so everything between the convolutions (BatchNorm, activations, padding, pooling) runs
per frame unchanged, as its 3D counterpart would; each inflated convolution regroups its input per clip,
convolves across time with stride 1 (T stays T) and hands frames back. Time is padded
by repeating the first and last frame, so that on a static clip every window sees T copies of one frame
and the inflated network gives exactly the 2D network's output.

Parameter names do not change (the 3D kernel is still `weight`), so layer groups, freezing and layer-wise
rates mean the same as for the 2D network. Which convolutions inflate: those whose spatial kernel is
larger than 1x1 (the stem and the depthwise or 3x3 convolutions); pointwise ones stay per frame, which
keeps the cost near the 2D network's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from graftune.errors import UserError


class InflatedConv(nn.Module):
    """A 2D convolution inflated in time; set `frames` (T) before each forward (see `set_frames`)."""

    def __init__(self, conv: nn.Conv2d, time_kernel: int) -> None:
        super().__init__()
        kernel = conv.weight.detach().unsqueeze(2).repeat(1, 1, time_kernel, 1, 1) / time_kernel
        self.weight = nn.Parameter(kernel, requires_grad=conv.weight.requires_grad)
        self.bias = conv.bias
        self.time_kernel = time_kernel
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        if isinstance(conv.padding, str):
            raise UserError(f"cannot inflate a convolution with padding='{conv.padding}'; use explicit padding.")
        self.padding = conv.padding
        # efficientnet-pytorch's Conv2dStaticSamePadding pads before its convolution
        self.static_padding: nn.Module = getattr(conv, "static_padding", None) or nn.Identity()
        self.frames = 1

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel={tuple(self.weight.shape[2:])}, "
                f"stride={self.stride}, groups={self.groups}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.static_padding(x)
        t = self.frames
        if x.shape[0] % t:
            raise ValueError(f"{x.shape[0]} frames are not a whole number of clips of {t}")
        clips = x.unflatten(0, (x.shape[0] // t, t))  # (B, T, C, H, W)
        pad = self.time_kernel // 2
        clips = torch.cat([clips[:, :1]] * pad + [clips] + [clips[:, -1:]] * (self.time_kernel - 1 - pad), dim=1)
        # The 3D convolution as a sum of 2D ones over the kernel's time steps: the same numbers, but CPU
        # back ends run 2D (depthwise) convolutions many times faster than 3D ones.
        out = None
        for step in range(self.time_kernel):
            window = clips[:, step:step + t].flatten(0, 1)
            part = functional.conv2d(window, self.weight[:, :, step], None, self.stride, self.padding, self.dilation,
                                     self.groups)
            out = part if out is None else out + part
        assert out is not None
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def inflate(body: nn.Module, time_kernel: int = 3) -> int:
    """Replace, in place, every convolution of `body` with a spatial kernel above 1x1 by its inflation; the
    number replaced."""
    if time_kernel < 1:
        raise UserError(f"video.inflate={time_kernel}: the temporal kernel size must be 1 or more (0: no inflation).")
    replaced = 0
    for parent in list(body.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and max(child.kernel_size) > 1:
                _check_inflatable(child, name)
                setattr(parent, name, InflatedConv(child, time_kernel))
                replaced += 1
    if not replaced:
        raise UserError("video.inflate: the backbone has no 2D convolution to inflate; use a temporal head "
                        "(video.temporal) instead.")
    return replaced


def _check_inflatable(conv: nn.Conv2d, name: str) -> None:
    """Convolutions whose forward does more than pad-then-convolve cannot be inflated faithfully."""
    known = type(conv) is nn.Conv2d or hasattr(conv, "static_padding")
    if not known or conv.padding_mode != "zeros":
        raise UserError(f"video.inflate: cannot inflate {name} ({type(conv).__name__}, padding mode "
                        f"{conv.padding_mode}); only plain Conv2d layers inflate. Use a temporal head instead.")


def set_frames(body: nn.Module, frames: int) -> None:
    """Tell every inflated convolution of `body` how many frames make one clip in the next forward."""
    for module in body.modules():
        if isinstance(module, InflatedConv):
            module.frames = frames
