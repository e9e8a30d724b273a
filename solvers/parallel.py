"""Spread a batch of independent problems over every available device.

The batch axis (axis 0 of every array) is sharded over a one-axis device mesh with
``jax.sharding``; jit-compiled vmapped solvers then run each device's share where it lies.
With one device this is a no-op. On a CPU, several devices can be simulated with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def shard_leading_axis(tree: Any) -> Any:
    """Place ``tree``'s arrays with axis 0 split across devices (when it divides evenly).

    A batch that does not divide by the device count stays where it is: results are the
    same either way, only the placement differs.
    """
    devices = jax.devices()
    leaves = jax.tree_util.tree_leaves(tree)
    batch = leaves[0].shape[0] if leaves else 0
    if len(devices) == 1 or batch % len(devices):
        return tree
    mesh = Mesh(np.array(devices), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    return jax.device_put(tree, sharding)
