"""--dry_run: compile the training and probe steps from shapes, for a topology, without data."""


import pytest
from conftest import with_overrides

from configs import default
from nme_train.train.dry_run import dry_run

pytestmark = pytest.mark.slow


def test_dry_run_reports_flops_and_memory_per_device():
    overrides = {"mesh.data": 4, "mesh.fsdp": 2, "sharding.fsdp_min_size": 256,
                 "data.data_dir": "/nonexistent/never-read"}
    plain = dry_run(with_overrides(default.get_config(), **overrides))
    gp = dry_run(with_overrides(default.get_config(), **overrides,
                                regularizers=(("gradient_penalty", {"rho": 0.1}),)))
    assert plain["parameters"] == gp["parameters"] > 0
    assert plain["mesh"] == {"data": 4, "fsdp": 2}
    for report in (plain, gp):
        for step in ("train_step", "probe_step"):
            assert report[step]["flops"] > 0
            assert report[step]["memory_mib_per_device"]["peak"] > 0
    # the penalty's step: one gradient and one Hessian-vector product, about 3x the FLOPs
    assert 2.5 < gp["train_step"]["flops"] / plain["train_step"]["flops"] < 3.5
    basis = plain["probe_step"]
    assert basis["lanczos_basis_mib_per_device"] == basis["lanczos_basis_mib_total"] / 2
