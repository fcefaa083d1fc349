"""Curvature operators and algorithms against dense float64 references.

References: jax.hessian of the flattened loss (H), explicit Jacobians and
output Hessians (G = J^T H_z J), jax.hessian of the residual-weighted
outputs (NME, computed independently of H - G), numpy.linalg.eigh, and
Monte Carlo means compared within their standard errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nme_train import curvature as cv
from nme_train.models import get_activation
from nme_train.models.activations import gelu
from tests.dense_split import gelu_split, split_model

pytestmark = pytest.mark.usefixtures("float64")  # double precision (tests/conftest.py)


D, C = 4, 3  # input features, classes


def mlp(activation):
    def apply(params, x):
        h = activation(x @ params["w1"] + params["b1"])
        return h @ params["w2"] + params["b2"]
    return apply


def cnn(params, x):  # x: [n, 6, 6, 1]; one 3x3 conv (2 channels), GELU, mean pool, dense
    y = jax.lax.conv_general_dilated(x, params["k"], (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = gelu(y + params["c"])
    return jnp.mean(y, axis=(1, 2)) @ params["w"] + params["b"]


def init(kind, rng):
    if kind == "cnn":
        p = {"k": rng.normal(size=(3, 3, 1, 2)), "c": rng.normal(size=2) * 0.1,
             "w": rng.normal(size=(2, C)), "b": rng.normal(size=C) * 0.1}
    else:
        p = {"w1": rng.normal(size=(D, 6)), "b1": rng.normal(size=6) * 0.1,
             "w2": rng.normal(size=(6, C)), "b2": rng.normal(size=C) * 0.1}
    return jax.tree.map(jnp.asarray, p)


def batches_for(kind, rng, sizes, loss_name):
    out = []
    for n in sizes:
        x = rng.normal(size=(n, 6, 6, 1) if kind == "cnn" else (n, D))
        y = rng.integers(0, C, n) if loss_name == "ce" else rng.normal(size=(n, C))
        out.append({"inputs": jnp.asarray(x), "targets": jnp.asarray(y)})
    return out


CASES = {  # name -> (apply_fn, model kind, loss)
    "mlp_tanh_ce": (mlp(jnp.tanh), "mlp", "ce"),
    "mlp_gelu_ce": (mlp(gelu), "mlp", "ce"),
    "mlp_gelu_mse": (mlp(gelu), "mlp", "mse"),
    "mlp_relu_ce": (mlp(jax.nn.relu), "mlp", "ce"),
    "cnn_gelu_ce": (cnn, "cnn", "ce"),
}


def make_case(name, sizes=(5, 3)):
    apply, kind, loss_name = CASES[name]
    rng = np.random.default_rng(0)
    params = init(kind, rng)
    batches = batches_for(kind, rng, sizes, loss_name)
    loss = cv.softmax_cross_entropy() if loss_name == "ce" else cv.mean_squared_error()
    return cv.Curvature(apply, loss), params, batches


def dense_matrices(curv, params, batches):
    """H, G, NME as dense matrices; each averaged over batches with weights n_b / N."""
    flat, unravel = ravel_pytree(params)
    total = sum(b["targets"].shape[0] for b in batches)
    H = G = NME = 0.0
    for b in batches:
        w = b["targets"].shape[0] / total

        def z_of(f, b=b):
            return curv.apply_fn(unravel(f), b["inputs"]).reshape(-1)

        def loss_of_z(z, b=b):
            return curv.loss(z.reshape(b["targets"].shape[0], C), b["targets"])

        z = z_of(flat)  # (each derivative one compiled program; op by op is far slower)
        J = jax.jit(jax.jacfwd(z_of))(flat)
        Hz = jax.jit(jax.hessian(loss_of_z))(z)
        r = jax.jit(jax.grad(loss_of_z))(z)
        H = H + w * jax.jit(jax.hessian(lambda f, b=b: loss_of_z(z_of(f))))(flat)
        G = G + w * J.T @ Hz @ J
        NME = NME + w * jax.jit(jax.hessian(lambda f, z_of=z_of, r=r: r @ z_of(f)))(flat)
    return {"hessian": np.asarray(H), "gauss_newton": np.asarray(G), "nme": np.asarray(NME)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_products_match_dense_matrices(name):
    curv, params, batches = make_case(name)
    dense = dense_matrices(curv, params, batches)
    np.testing.assert_allclose(dense["hessian"], dense["gauss_newton"] + dense["nme"],
                               rtol=1e-10, atol=1e-12)
    flat, unravel = ravel_pytree(params)
    v = jnp.asarray(np.random.default_rng(1).normal(size=flat.shape))
    for kind in cv.KINDS:
        for linearize in (True, False):
            mv = jax.jit(lambda p, vv, kind=kind, lin=linearize: curv.operator(
                kind, p, batches, linearize=lin)(vv))(params, unravel(v))
            np.testing.assert_allclose(ravel_pytree(mv)[0], dense[kind] @ v, rtol=1e-10,
                                       atol=1e-12, err_msg=f"{kind} linearize={linearize}")


def test_output_losses_closed_forms_match_autodiff():
    rng = np.random.default_rng(2)
    z = jnp.asarray(rng.normal(size=(4, C)))
    u = jnp.asarray(rng.normal(size=(4, C)))
    for loss, y in ((cv.softmax_cross_entropy(0.1), jnp.asarray([0, 2, 1, 1])),
                    (cv.mean_squared_error(), jnp.asarray(rng.normal(size=(4, C))))):
        auto = cv.as_output_loss(loss.value)
        np.testing.assert_allclose(loss.residual(z, y), auto.residual(z, y), rtol=1e-12)
        np.testing.assert_allclose(loss.hessian_product(z, y, u), auto.hessian_product(z, y, u),
                                   rtol=1e-12, atol=1e-15)


def test_training_and_probe_losses_share_one_smoothed_cross_entropy():
    """p = softmax(log [1, 2, 1]) = [1/4, 1/2, 1/4], label 1, smoothing 0.3: t = [.1, .8, .1],
    CE = -(0.2 log 1/4 + 0.8 log 1/2) = 1.2 log 2 (0.3 log 2 less than without smoothing)."""
    from nme_train.train.step import make_loss_fn

    z = jnp.log(jnp.asarray([[1.0, 2.0, 1.0]]))
    y = jnp.asarray([1])
    for smoothing, expected in ((0.3, 1.2 * np.log(2)), (0.0, np.log(2))):
        assert float(make_loss_fn(smoothing)(z, y)) == pytest.approx(expected, rel=1e-12)
        assert float(cv.softmax_cross_entropy(smoothing)(z, y)) == pytest.approx(expected,
                                                                                  rel=1e-12)


def run_lanczos(curv, params, batches, kind, steps, seed=0):
    v0 = cv.rademacher_like(jax.random.PRNGKey(seed), params)
    alphas, betas, basis = jax.jit(lambda p, v: cv.lanczos(
        curv.operator(kind, p, batches), v, steps))(params, v0)
    return cv.LanczosResult(alphas, betas, basis)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp_gelu_ce", "cnn_gelu_ce", "mlp_gelu_mse"])
def test_lanczos_extreme_eigenvalues_match_eigh(name):
    curv, params, batches = make_case(name)
    dense = dense_matrices(curv, params, batches)
    size = ravel_pytree(params)[0].size
    for kind in cv.KINDS:
        exact = np.linalg.eigvalsh(dense[kind])
        scale = np.max(np.abs(exact))
        # a Krylov space holds one copy of a repeated eigenvalue (G has many zeros)
        exact = exact[np.concatenate([[True], np.diff(exact) > 1e-8 * scale])]
        result = run_lanczos(curv, params, batches, kind, steps=size)
        top, top_bounds = result.top(3)
        bottom, _ = result.bottom(3)
        np.testing.assert_allclose(top, exact[::-1][:3], atol=1e-6 * scale, err_msg=kind)
        np.testing.assert_allclose(bottom, exact[:3], atol=1e-6 * scale, err_msg=kind)
        assert np.all(top_bounds < 1e-6 * scale)
        # the Ritz vector of the top value is an eigenvector: ||M x - theta x|| small
        x = result.ritz_vectors(np.array([np.argmax(result.ritz()[0])]))
        x = jax.tree.map(lambda a: a[0], x)
        mx = curv.operator(kind, params, batches)(x)
        residual = ravel_pytree(mx)[0] - top[0] * ravel_pytree(x)[0]
        assert np.linalg.norm(residual) < 1e-6 * scale


@pytest.mark.slow
def test_lanczos_error_bounds_hold_before_convergence():
    curv, params, batches = make_case("cnn_gelu_ce")
    exact = np.linalg.eigvalsh(dense_matrices(curv, params, batches)["hessian"])
    result = run_lanczos(curv, params, batches, "hessian", steps=6)
    values, bounds = result.top(1)
    assert abs(values[0] - exact[-1]) <= bounds[0] + 1e-12
    assert values[0] <= exact[-1] + 1e-10  # Ritz values lie inside the spectrum


def test_host_basis_lanczos_equals_the_jitted_one():
    curv, params, batches = make_case("mlp_tanh_ce")
    device = run_lanczos(curv, params, batches, "nme", steps=10)
    mv = jax.jit(lambda v: curv.operator("nme", params, batches)(v))
    shardings = jax.tree.map(lambda x: x.sharding, params)
    host = cv.lanczos_host(mv, cv.rademacher_like(jax.random.PRNGKey(0), params), 10, shardings)
    np.testing.assert_allclose(host.alphas, device.alphas, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(host.betas, device.betas, rtol=1e-9, atol=1e-12)


def test_density_runs_follow_basis_memory(monkeypatch):
    """SLQ densities with the basis in host memory equal the on-device ones (same starts),
    and the host setting never calls the on-device driver (which would hold the basis)."""
    from nme_train.curvature import probes
    from nme_train.curvature.probes import ProbeSettings, ProbeSuite

    curv, params, batches = make_case("mlp_tanh_ce")
    records = {}
    for where in ("device", "host"):
        if where == "host":
            def refuse(*args, **kwargs):
                raise AssertionError("basis_memory='host' ran the on-device Lanczos driver")

            monkeypatch.setattr(probes, "lanczos_iterate", refuse)
        settings = ProbeSettings(kinds=("nme",), lanczos_steps=4, top_k=1, bottom_k=1,
                                 trace_probes=0, density_runs=2, density_steps=6,
                                 alignment=False, basis_memory=where)
        records[where] = ProbeSuite(curv, settings).run(params, batches, step=0)
        assert records[where]["density_basis_memory"] == where
    device, host = (records[w]["nme/density"] for w in ("device", "host"))
    np.testing.assert_allclose(host["grid"], device["grid"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(host["density"], device["density"], rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_hutchinson_traces_share_probes_and_are_unbiased():
    curv, params, batches = make_case("mlp_gelu_ce")
    dense = dense_matrices(curv, params, batches)
    build = jax.jit(curv.linear_operator, static_argnums=0)
    forms = np.stack([cv.hutchinson_quadratic_forms(build(kind, params, batches), params,
                                                    jax.random.PRNGKey(3), 2000).sum(axis=-1)
                      for kind in cv.KINDS], axis=1)
    # per probe: v^T H v = v^T G v + v^T NME v
    np.testing.assert_allclose(forms[:, 0], forms[:, 1] + forms[:, 2], rtol=1e-9, atol=1e-12)
    for i, kind in enumerate(cv.KINDS):
        mean, se = cv.mean_and_standard_error(forms[:, i])
        assert abs(mean - np.trace(dense[kind])) < 4 * se, (kind, mean, np.trace(dense[kind]), se)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn_gelu_ce", "mlp_relu_ce"])
def test_per_layer_traces_are_the_dense_block_traces(name):
    """v_l^T (M v)_l averages to tr(M_ll), the trace of leaf l's diagonal block, for H, G, NME."""
    curv, params, batches = make_case(name)
    dense = dense_matrices(curv, params, batches)
    paths = cv.leaf_paths(params)
    assert paths == sorted(params)  # a flat dict: its keys, in flattening order
    bounds = np.cumsum([0] + [x.size for x in jax.tree.leaves(params)])  # ravel_pytree order
    build = jax.jit(curv.linear_operator, static_argnums=0)
    forms = np.stack([cv.hutchinson_quadratic_forms(build(kind, params, batches), params,
                                                    jax.random.PRNGKey(5), 3000)
                      for kind in cv.KINDS], axis=1)
    assert forms.shape == (3000, len(cv.KINDS), len(paths))
    for i, kind in enumerate(cv.KINDS):
        for leaf, path in enumerate(paths):
            lo, hi = bounds[leaf], bounds[leaf + 1]
            block = np.trace(dense[kind][lo:hi, lo:hi])
            mean, se = cv.mean_and_standard_error(forms[:, i, leaf])
            assert abs(mean - block) < 4.5 * max(se, 1e-12), (kind, path, mean, block, se)
    if name == "mlp_relu_ce":  # piecewise linear in each layer's weights: no diagonal NME block
        for leaf in range(len(paths)):
            lo, hi = bounds[leaf], bounds[leaf + 1]
            assert np.abs(dense["nme"][lo:hi, lo:hi]).max() == 0.0
        assert np.abs(dense["nme"]).max() > 1e-3  # the NME lives across layers


def test_slq_quadrature_is_exact_for_low_degree_moments():
    curv, params, batches = make_case("mlp_tanh_ce")
    H = dense_matrices(curv, params, batches)["hessian"]
    steps = 5
    v0 = cv.rademacher_like(jax.random.PRNGKey(7), params)
    result = run_lanczos(curv, params, batches, "hessian", steps, seed=7)
    nodes, weights = result.quadrature()
    u = np.asarray(ravel_pytree(v0)[0])
    u = u / np.linalg.norm(u)
    for k in range(2 * steps):  # Gauss quadrature with m nodes: exact to degree 2m - 1
        exact = u @ np.linalg.matrix_power(H, k) @ u
        np.testing.assert_allclose(np.sum(weights * nodes**k), exact, rtol=1e-8,
                                   atol=1e-10 * np.max(np.abs(np.linalg.eigvalsh(H))) ** k)


def test_slq_density_estimates_the_spectrum():
    curv, params, batches = make_case("mlp_gelu_ce")
    H = dense_matrices(curv, params, batches)["hessian"]
    run = jax.jit(lambda p, v: cv.lanczos(curv.operator("hessian", p, batches), v, 8)[:2])
    runs = [cv.LanczosResult(*run(params, cv.rademacher_like(jax.random.PRNGKey(s), params)))
            for s in range(40)]
    nodes, weights = cv.slq_nodes_and_weights(runs)
    assert abs(np.sum(weights) - 1.0) < 1e-10
    grid, density = cv.spectral_density(nodes, weights)
    assert abs(np.trapezoid(density, grid) - 1.0) < 1e-3
    # the measure's mean is tr(H) / P: compare per run within the spread of the runs
    per_run = [np.sum(w * n) for n, w in (r.quadrature() for r in runs)]
    mean, se = cv.mean_and_standard_error(per_run)
    assert abs(mean - np.trace(H) / H.shape[0]) < 4 * se


def test_nondeterministic_operator_is_refused():
    curv, params, batches = make_case("mlp_tanh_ce")
    calls = []

    def noisy_apply(p, x):  # a different function on every call, like unkeyed dropout
        calls.append(1)
        return curv.apply_fn(p, x) * (1.0 + 0.01 * len(calls))

    noisy = cv.Curvature(noisy_apply, curv.loss)
    v = cv.rademacher_like(jax.random.PRNGKey(0), params)
    with pytest.raises(ValueError, match="not deterministic"):
        cv.check_deterministic(lambda u: noisy.operator("hessian", params, batches)(u), v)
    cv.check_deterministic(lambda u: curv.operator("hessian", params, batches)(u), v)


@pytest.mark.slow
def test_distributed_operators_equal_single_device():
    """Params sharded over fsdp, batches over data (8 fake devices): same products."""
    curv, params, batches = make_case("mlp_gelu_ce", sizes=(8, 16))
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
    pshard = {"w1": NamedSharding(mesh, P(None, "fsdp")), "b1": NamedSharding(mesh, P("fsdp")),
              "w2": NamedSharding(mesh, P("fsdp", None)), "b2": NamedSharding(mesh, P())}
    bshard = NamedSharding(mesh, P("data"))
    sharded_params = jax.device_put(params, pshard)
    sharded_batches = [jax.device_put(b, bshard) for b in batches]
    v0 = cv.rademacher_like(jax.random.PRNGKey(0), params)
    for kind in cv.KINDS:
        def run(p, bs, v, kind=kind, shardings=None):
            return cv.lanczos(curv.operator(kind, p, bs), v, 12, shardings)

        single = jax.jit(run)(params, batches, v0)
        multi = jax.jit(lambda p, bs, v, kind=kind: run(p, bs, v, kind, pshard))(
            sharded_params, sharded_batches, jax.device_put(v0, pshard))
        np.testing.assert_allclose(multi[0], single[0], rtol=1e-9, err_msg=kind)
        np.testing.assert_allclose(multi[1], single[1], rtol=1e-9, err_msg=kind)
        assert multi[2]["w1"].sharding.spec == P(None, None, "fsdp")


@pytest.mark.slow
def test_stepwise_lanczos_equals_the_jitted_loop():
    """lanczos_iterate on a Partial operator (the probes' driver) = lanczos in one jit."""
    curv, params, batches = make_case("cnn_gelu_ce")
    loop = run_lanczos(curv, params, batches, "nme", steps=8)
    linear = jax.jit(curv.linear_operator, static_argnums=0)("nme", params, batches)
    step = cv.lanczos_iterate(linear, cv.rademacher_like(jax.random.PRNGKey(0), params), 8,
                              keep_basis=True)
    np.testing.assert_allclose(step.alphas, loop.alphas, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(step.betas, loop.betas, rtol=1e-10, atol=1e-13)
    v = cv.rademacher_like(jax.random.PRNGKey(5), params)
    np.testing.assert_allclose(ravel_pytree(cv.apply(linear, v))[0],
                               ravel_pytree(curv.operator("nme", params, batches)(v))[0],
                               rtol=1e-12)


def dense_empirical_fisher(curv, params, batches):
    """(1/n) sum_i g_i g_i^T per batch, weighted n_b / N, with g_i the gradient of example
    i's own loss (a batch of one), from jax.jacrev of the per-example losses."""
    flat, unravel = ravel_pytree(params)
    total = sum(b["targets"].shape[0] for b in batches)
    F = 0.0
    for b in batches:
        n = b["targets"].shape[0]

        def losses(f, b=b, n=n):
            z = curv.apply_fn(unravel(f), b["inputs"])
            return jnp.stack([curv.loss(z[i:i + 1], b["targets"][i:i + 1]) for i in range(n)])

        g = jax.jit(jax.jacrev(losses))(flat)  # [n, P]
        F = F + (n / total) * g.T @ g / n
    return np.asarray(F)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn_gelu_ce", "mlp_gelu_mse", "mlp_relu_ce"])
def test_empirical_fisher_and_every_figure_on_it_match_the_dense_matrix(name):
    """The fourth operator kind against a dense float64 reference: its products, and each
    figure of the probe (Lanczos ends, Hutchinson forms, alignment, density) on it."""
    from nme_train.curvature.probes import ProbeSettings, ProbeSuite

    curv, params, batches = make_case(name)
    F = dense_empirical_fisher(curv, params, batches)
    flat, unravel = ravel_pytree(params)
    v = jnp.asarray(np.random.default_rng(1).normal(size=flat.shape))
    for linearize in (True, False):
        mv = jax.jit(lambda p, vv, lin=linearize: curv.operator(
            "fisher", p, batches, linearize=lin)(vv))(params, unravel(v))
        np.testing.assert_allclose(ravel_pytree(mv)[0], F @ v, rtol=1e-10, atol=1e-12)
    settings = ProbeSettings(kinds=("fisher",), lanczos_steps=flat.size, top_k=3, bottom_k=1,
                             trace_probes=4, density_runs=2, density_steps=12)
    record = ProbeSuite(curv, settings).run(params, batches, step=0)
    eigenvalues = np.linalg.eigvalsh(F)
    np.testing.assert_allclose(record["fisher/top_eigenvalues"], eigenvalues[::-1][:3],
                               rtol=1e-8)
    assert abs(record["fisher/bottom_eigenvalues"][0]) < 1e-8 * eigenvalues[-1]  # rank <= n
    key = jax.random.PRNGKey(settings.seed)
    probes = [ravel_pytree(cv.rademacher_like(jax.random.fold_in(jax.random.fold_in(key, 1000),
                                                                  j), params))[0]
              for j in range(4)]
    dense_trace = np.mean([p @ F @ p for p in probes])
    np.testing.assert_allclose(record["fisher/trace"], dense_trace, rtol=1e-9)
    grad = ravel_pytree(curv.gradient(params, batches))[0]
    np.testing.assert_allclose(record["fisher/alignment"], grad @ F @ grad / (grad @ grad),
                               rtol=1e-9)
    grid, density = (np.asarray(record["fisher/density"][k]) for k in ("grid", "density"))
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, atol=1e-2)
    # SLQ's first moment is each start vector's Rayleigh quotient, averaged
    starts = [ravel_pytree(cv.rademacher_like(jax.random.fold_in(key, 2000 + r), params))[0]
              for r in range(2)]
    rayleigh = np.mean([s @ F @ s / (s @ s) for s in starts])
    np.testing.assert_allclose(np.trapezoid(grid * density, grid), rayleigh, rtol=2e-2)
    assert record["matvecs"] == settings.matvecs_per_kind()


@pytest.mark.slow
@pytest.mark.xdist_group("dense_split")  # one worker computes each dense reference once
@pytest.mark.parametrize("kind,batch_norm", [("mlp", False), ("cnn", True)])
def test_nme_split_by_source_matches_the_second_derivative_terms(kind, batch_norm):
    """NME = NME_act + NME_norm + NME_between against dense references written from the
    sources' own second derivatives (tests/dense_split.py): NME_act from the activations'
    sigma'' terms, NME_norm from the Hessian of BatchNorm's normalization in its input,
    NME_between the rest; the operators come from nested twins (sigma'' ablated; then
    also BatchNorm's statistics), and every figure of the split (Lanczos ends, traces,
    shares along g^) matches."""
    from nme_train.curvature.probes import ProbeSettings, ProbeSuite
    from nme_train.models.activations import ablated_twin
    from nme_train.models.layers import normalize_without_curvature

    apply, params, batch = split_model(kind, batch_norm)
    act, twin = (get_activation(n) for n in ("gelu", ablated_twin("gelu")))
    loss = cv.softmax_cross_entropy()

    def frozen(a, axes):
        return normalize_without_curvature(a, axes, 1e-5)

    curv = cv.Curvature(lambda p, x: apply(p, x, act)[0], loss,
                        ablated_apply_fn=lambda p, x: apply(p, x, twin)[0],
                        between_apply_fn=lambda p, x: apply(p, x, twin,
                                                            normalization=frozen)[0])
    flat, unravel = ravel_pytree(params)
    parts = ("nme_activation", "nme_rest", "nme_normalization", "nme_between")
    dense = {k: v for k, v in gelu_split(kind, batch_norm).items()  # act, loss: GELU, CE
             if k in ("nme",) + parts}
    nme, nme_act = dense["nme"], dense["nme_activation"]
    assert np.abs(nme_act).max() > 1e-2 and np.abs(dense["nme_between"]).max() > 1e-2
    if batch_norm:  # BatchNorm's statistics add curvature of their own
        assert np.abs(dense["nme_normalization"]).max() > 1e-2
    else:
        assert not np.any(dense["nme_normalization"])
    v = jnp.asarray(np.random.default_rng(1).normal(size=flat.shape))
    for name in parts:
        mv = jax.jit(lambda p, vv, name=name: curv.operator(name, p, [batch])(vv))(
            params, unravel(v))
        np.testing.assert_allclose(ravel_pytree(mv)[0], dense[name] @ v, rtol=1e-9,
                                   atol=1e-11, err_msg=name)
    settings = ProbeSettings(kinds=("nme",) + parts, lanczos_steps=flat.size, top_k=2,
                             bottom_k=2, trace_probes=3)
    record = ProbeSuite(curv, settings).run(params, [batch], step=0)
    key = jax.random.fold_in(jax.random.PRNGKey(0), 1000)
    probes = [ravel_pytree(cv.rademacher_like(jax.random.fold_in(key, j), params))[0]
              for j in range(3)]
    grad = np.asarray(ravel_pytree(curv.gradient(params, [batch]))[0])
    unit = grad / np.linalg.norm(grad)
    for name, matrix in dense.items():
        eigenvalues = np.linalg.eigvalsh(matrix)
        if np.any(matrix):  # (a zero operator stops Lanczos at its first step)
            np.testing.assert_allclose(record[f"{name}/top_eigenvalues"],
                                       eigenvalues[::-1][:2], rtol=1e-6, atol=1e-9,
                                       err_msg=name)
            np.testing.assert_allclose(record[f"{name}/bottom_eigenvalues"], eigenvalues[:2],
                                       rtol=1e-6, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(record[f"{name}/trace"],
                                   np.mean([p @ matrix @ p for p in probes]), rtol=1e-8,
                                   atol=1e-12, err_msg=name)
        np.testing.assert_allclose(record[f"{name}/grad_product_norm"],
                                   np.linalg.norm(matrix @ unit), rtol=1e-8, atol=1e-12)
    norm = np.linalg.norm(nme @ unit)
    for part, name in (("nme_activation", "activation"), ("nme_normalization", "normalization"),
                       ("nme_between", "between")):
        share = np.linalg.norm(dense[part] @ unit) / norm
        np.testing.assert_allclose(record[f"nme_split/{name}_norm_share"], share, rtol=1e-8,
                                   atol=1e-12)
        np.testing.assert_allclose(record[f"nme_split/{name}_squared_norm_share"], share**2,
                                   rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(record["nme_split/rest_alignment_share"],
                               unit @ (nme - nme_act) @ unit / (unit @ nme @ unit), rtol=1e-8)
    assert record["nme_split/identity_residual"] < 1e-10


@pytest.mark.slow
def test_every_registered_operator_kind_is_symmetric_and_deterministic():
    """Each kind of OPERATORS (a user's too) on the tiny BatchNorm MLP with both twins:
    u . M v = v . M u, the same product twice, and linear in v."""
    from nme_train.models.activations import ablated_twin
    from nme_train.models.layers import normalize_without_curvature

    apply, params, batch = split_model("mlp", True)
    act, twin = (get_activation(n) for n in ("gelu", ablated_twin("gelu")))
    curv = cv.Curvature(lambda p, x: apply(p, x, act)[0], cv.softmax_cross_entropy(),
                        ablated_apply_fn=lambda p, x: apply(p, x, twin)[0],
                        between_apply_fn=lambda p, x: apply(
                            p, x, twin, normalization=lambda a, axes:
                            normalize_without_curvature(a, axes, 1e-5))[0])
    flat, unravel = ravel_pytree(params)
    rng = np.random.default_rng(3)
    u, v = (unravel(jnp.asarray(rng.normal(size=flat.shape))) for _ in range(2))
    for kind in cv.OPERATORS:
        matvec = jax.jit(lambda p, x, kind=kind: curv.operator(kind, p, [batch])(x))
        mu, mv = (ravel_pytree(matvec(params, x))[0] for x in (u, v))
        fu, fv = ravel_pytree(u)[0], ravel_pytree(v)[0]
        np.testing.assert_allclose(fu @ mv, fv @ mu, rtol=1e-8, atol=1e-10, err_msg=kind)
        np.testing.assert_array_equal(ravel_pytree(matvec(params, v))[0], mv, err_msg=kind)
        both = ravel_pytree(matvec(params, jax.tree.map(lambda a, b: 2 * a - b, u, v)))[0]
        np.testing.assert_allclose(both, 2 * mu - mv, rtol=1e-8, atol=1e-10, err_msg=kind)
