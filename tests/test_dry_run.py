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
    assert basis["basis_memory"] == "device"  # auto: small enough
    probe, step = plain["probe_step"], plain["train_step"]["flops"]
    assert probe["matvecs_per_kind"] == 2 + 20 + 10 + 1  # determinism, Lanczos, traces, alignment
    for kind in ("hessian", "gauss_newton", "nme"):
        # a curvature-vector product costs more than a forward pass and less than ~4 gradients
        assert 0.3 * step < probe["kinds"][kind]["matvec_flops"] < 4 * step
    every = plain["probe_share"]["every_steps_for_5_percent"]
    for k, within in ((every, True), (every - 1, False)):
        assert (probe["flops"] / (k * step + probe["flops"]) <= 0.05) == within


def test_dry_run_says_where_the_basis_goes():
    config = with_overrides(default.get_config(), **{
        "data.data_dir": "/nonexistent/never-read", "probes.max_basis_mib": 1.0,
        "probes.every_steps": 50})
    report = dry_run(config)
    probe = report["probe_step"]
    assert probe["lanczos_basis_mib_total"] > 1.0 and probe["basis_memory"] == "host"
    assert probe["peak_mib_per_device"] == max(  # the basis is not on the device
        probe["memory_mib_per_device"]["peak"], probe["matvec_memory_mib_per_device"]["peak"])
    share = report["probe_share"]
    assert share["every_steps"] == 50
    assert share["share"] == probe["flops"] / (50 * report["train_step"]["flops"]
                                               + probe["flops"])


def test_dry_run_finds_the_smallest_accumulation_that_fits():
    """The training step's peak per device falls with more microbatches (one microbatch's
    activations live at a time); given a memory between the peaks of k = 1 and k = 4,
    the dry run answers the smallest k that fits, and the same FLOPs per step."""
    import jax

    from nme_train.data import DATASETS
    from nme_train.train.dry_run import smallest_fitting_k, train_step_memory

    config = with_overrides(default.get_config(), **{
        "data.data_dir": "/nonexistent/never-read", "batch_size": 512,
        "model.features": (32, 64), "model.hidden": (256,)})
    spec, devices = DATASETS["digits"], jax.devices()[:1]
    steps = {k: train_step_memory(config, spec, devices, k) for k in (1, 4)}
    peak = {k: s["memory_mib_per_device"]["peak"] for k, s in steps.items()}
    assert peak[4] < 0.75 * peak[1], peak
    assert steps[4]["flops"] == pytest.approx(steps[1]["flops"], rel=0.05)
    assert steps[4]["microbatch_per_device"] == 128
    budget = (peak[1] + peak[4]) / 2 / 1024
    fit = smallest_fitting_k(config, spec, devices, budget, steps)
    assert fit["grad_accum_steps"] in (2, 4)
    assert [t["grad_accum_steps"] for t in fit["tried"]][:2] == [1, 2]
    assert all(t["peak_mib"] > budget * 1024 for t in fit["tried"][:-1])
    assert fit["tried"][-1]["peak_mib"] <= budget * 1024
    none = smallest_fitting_k(config, spec, devices, 1e-6, steps)
    assert none["grad_accum_steps"] is None and none["tried"][-1]["grad_accum_steps"] == 512
