"""Sharded across (simulated) devices gives the same numbers as one device."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from solvers import scheme1, scheme2
    from solvers.objectives import Moments, data_objective, filter_objective, stack_quadratics
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((4, 6, 5, 3, 3)).astype(np.float32)
    quads = stack_quadratics([filter_objective(w) for w in weights])
    result = scheme1.fit_batch(weights, quads, 3)
    x = rng.standard_normal((500, 45))
    moments = Moments.symmetric(500, x.mean(0), x.T @ x / 500)
    data = scheme2.fit_batch(weights, 4, stack_quadratics([data_objective(w, moments) for w in weights]), 50)
    print(json.dumps({"devices": len(jax.devices()), "coeffs": result.coeffs.tolist(),
                      "vertical": result.vertical.tolist(), "scheme2": data.loss.tolist()}))
""")


def run_with_devices(count: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sharded_equals_single_device():
    single, sharded = run_with_devices(1), run_with_devices(2)
    assert single["devices"] == 1 and sharded["devices"] == 2
    np.testing.assert_allclose(sharded["coeffs"], single["coeffs"], atol=1e-4)
    np.testing.assert_allclose(np.abs(sharded["vertical"]), np.abs(single["vertical"]), atol=1e-4)
    np.testing.assert_allclose(sharded["scheme2"], single["scheme2"], atol=1e-5)
