"""Optimizers of the suite: SGDP and AdamP (arXiv 2006.08217, checked against ``adamp==0.3.0``) and the
factory that builds any optimizer of ``configs/optimizer/*.yaml`` for a model.

NOTE: [projection scope] is stated in ``adamp_repro.optim.projection``.
"""

from adamp_repro.optim.adamp import AdamP
from adamp_repro.optim.factory import OPTIMIZERS, build_optimizer
from adamp_repro.optim.param_groups import describe_param_groups, param_groups
from adamp_repro.optim.sgdp import SGDP

__all__ = ["OPTIMIZERS", "SGDP", "AdamP", "build_optimizer", "describe_param_groups", "param_groups"]
