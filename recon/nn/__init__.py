"""The torch modules recon puts into models, and nothing else: importable without JAX or h5py."""
from recon.nn.base import LowRankModule
from recon.nn.geometry import ConvGeometry, Geometry, LinearGeometry, geometry_of
from recon.nn.peers import CPConv, LowRankLinear, Tucker2Conv
from recon.nn.separable import LowRankExpConv, Scheme1Conv, Scheme2Conv

__all__ = ["CPConv", "ConvGeometry", "Geometry", "LinearGeometry", "LowRankExpConv", "LowRankLinear",
           "LowRankModule", "Scheme1Conv", "Scheme2Conv", "Tucker2Conv", "geometry_of"]
