"""Which forward implementation of each scheme is fastest: the measurement behind recon.modules.

    python -m benchmarks.forward_variants [--device cpu|cuda]

Scheme 1 variants (same M shared bases):
  * grouped (recon's, the seed project's layout): vertical conv with groups=C to C*M maps,
    depthwise horizontal conv with groups=C*M, then the 1x1 mixing conv.
  * fold: channels folded into the batch, (B*C, 1, H, W); one vertical conv with M outputs,
    one depthwise horizontal conv, one 1x1 mixing conv. (recon's first layout; slower here.)
Scheme 2 variants: two dense convs on NCHW tensors (recon's) vs the same in channels_last.
All times are medians of repeated runs on the same input, side by side, with the dense conv.
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import machine, markdown_table, write_section
from benchmarks.inference_speed import module_for_speedup
from recon.bench.timing import median_latencies

SHAPES = [("fmnist conv2", 64, 128, 5, 14, 32), ("fmnist conv3", 128, 192, 3, 7, 32),
          ("VGG 256->256 @56", 256, 256, 3, 56, 8), ("VGG 512->512 @14", 512, 512, 3, 14, 32)]


class FoldedScheme1(nn.Module):
    """Scheme 1 with the channels folded into the batch (stride 1, no dilation)."""

    def __init__(self, module) -> None:
        super().__init__()
        self.padding = (module.row_padding, module.col_padding)
        self.bases = module.num_bases
        self.vertical, self.horizontal = module.vertical, module.horizontal
        self.coeffs, self.bias = module.coeffs, module.bias

    def forward(self, x):
        batch, channels, height, width = x.shape
        maps = F.conv2d(x.reshape(batch * channels, 1, height, width), self.vertical, None, 1, (self.padding[0], 0))
        maps = F.conv2d(maps, self.horizontal, None, 1, (0, self.padding[1]), 1, self.bases)
        return F.conv2d(maps.reshape(batch, channels * self.bases, *maps.shape[-2:]), self.coeffs, self.bias)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.forward_variants", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    rows = []
    with torch.inference_mode():
        for name, c, n, k, size, batch in SHAPES:
            conv = nn.Conv2d(c, n, k, padding=k // 2).to(args.device)
            x = torch.randn(batch, c, size, size, device=args.device)
            s1 = module_for_speedup(conv, "scheme1", 2, size).to(args.device)
            folded = FoldedScheme1(s1).to(args.device)
            torch.testing.assert_close(folded(x), s1(x), atol=1e-3, rtol=1e-3)
            s2 = module_for_speedup(conv, "scheme2", 2, size).to(args.device)
            x_last = x.contiguous(memory_format=torch.channels_last)
            s2_last = copy.deepcopy(s2).to(memory_format=torch.channels_last)  # Module.to works in place
            conv_last = copy.deepcopy(conv).to(memory_format=torch.channels_last)
            t_dense, *times = median_latencies([conv, s1, folded, s2, s2_last, conv_last],
                                               [x, x, x, x, x_last, x_last], args.repeats)
            rows.append([name, batch, f"{1e3 * t_dense:.2f}"] +
                        [f"{1e3 * t:.2f} ({t_dense / t:.2f}x)" for t in times])
            print(rows[-1], flush=True)
    body = "\n\n".join([
        f"## Forward variants on {args.device} (`python -m benchmarks.forward_variants --device {args.device}`)",
        f"Machine: {machine()}.",
        "Bases for 2x theoretical speedup; ms per call, (speedup vs dense NCHW conv).",
        markdown_table(["layer", "batch", "dense NCHW ms", "S1 grouped (recon)", "S1 fold", "S2 NCHW (recon)",
                        "S2 channels_last", "dense channels_last"], rows),
    ])
    write_section(f"forward-variants-{args.device}", body)


if __name__ == "__main__":
    main()
