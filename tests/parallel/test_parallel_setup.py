"""Layout checks and multi-process settings: bad input is a ValueError that names the numbers."""

from types import SimpleNamespace

import numpy as np
import pytest

from dsv3_jax.layers.moe import node_routing
from dsv3_jax.parallel import distributed, layout
from tests.conftest import tiny_config


def test_layout_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"n_routed_experts=8 is not divisible by the mesh's expert axis size 3"):
        node_routing.check_layout(8, 4, 3, 1)
    with pytest.raises(ValueError, match=r"expert axis size 8 is not divisible into ep_nodes=3"):
        node_routing.check_layout(8, 4, 8, 3)
    with pytest.raises(ValueError, match=r"n_expert_groups=4 groups are not aligned with 8 nodes"):
        node_routing.check_layout(16, 4, 8, 8)
    node_routing.check_layout(16, 8, 8, 4)  # 2 groups per node: fine
    node_routing.check_layout(16, 1, 8, 8)  # no groups: nothing to align


def test_mesh_must_cover_the_devices():
    with pytest.raises(ValueError, match=r"2 devices, but 1 are available"):
        layout.setup_mesh({"data": 2}, tiny_config(), batch_size=4)
    mesh, cfg = layout.setup_mesh({"data": -1}, tiny_config(moe_impl="ep"), batch_size=3)
    assert dict(mesh.shape)["data"] == 1 and cfg.ep_nodes == 0  # one rank: no expert layout to check


def _devices(procs):
    return np.array([SimpleNamespace(process_index=p) for p in procs], dtype=object)


def test_nodes_along_the_expert_axis_follow_processes():
    assert layout.nodes_of_mesh(_devices([0] * 4 + [1] * 4).reshape(1, 8), 1) == 2
    assert layout.nodes_of_mesh(_devices([0] * 4 + [1] * 4).reshape(2, 4), 1) == 1  # data over hosts
    with pytest.raises(ValueError, match=r"processes along it are \[0, 0, 0, 1\]"):
        layout.nodes_of_mesh(_devices([0, 0, 0, 1]), 0)


def test_distributed_settings_from_flags_and_environment():
    assert distributed.resolve(environ={}) is None
    assert distributed.resolve(environ={"SLURM_NTASKS": "16"}) == ("auto", None, None)
    assert distributed.resolve("h:1234", 2, 1, environ={}) == ("h:1234", 2, 1)
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:9999", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed.resolve(environ=env) == ("10.0.0.1:9999", 4, 3)
    with pytest.raises(ValueError, match=r"missing \['JAX_PROCESS_ID'\]"):
        distributed.resolve(environ={k: v for k, v in env.items() if k != "JAX_PROCESS_ID"})
    with pytest.raises(ValueError, match=r"process_id=2 must be in \[0, num_processes=2\)"):
        distributed.resolve("h:1", 2, 2, environ={})
    with pytest.raises(ValueError, match="together"):
        distributed.resolve("h:1", None, 0, environ={})
