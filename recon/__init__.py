"""recon: replace convolutions by low-rank separable filter banks (Jaderberg et al. 2014).

Inference code needs only::

    from recon import apply_bases
    model = apply_bases(model, "bases/fmnist-alexnet.h5")
"""
from recon.modules import LowRankExpConv, Scheme1Conv, Scheme2Conv
from recon.surgery import apply_bases, load_bases

__all__ = ["LowRankExpConv", "Scheme1Conv", "Scheme2Conv", "apply_bases", "load_bases"]
__version__ = "0.1.0"
