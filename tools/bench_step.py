"""Times the framework's training step against a minimal hand-written flax + optax step.

    python tools/bench_step.py                                   # default CNN, digits shape
    python tools/bench_step.py --config configs/cifar10_resnet18.py --batch_size 128

Both steps train the same flax module with the same optax transformation on
the same synthetic batch (random uint8 images of the dataset's shape), in
one process. Rounds alternate between the two so that machine noise hits
both alike; the figure is the ratio of the median times per step. Prints a
table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nme_train.cli import load_config_file
from nme_train.models import build_model
from nme_train.optim import learning_rate_schedule, make_optimizer
from nme_train.train.benchmark import one_device_experiment


def hand_written_step(config, spec, tx):
    """The plainest correct step: normalise, forward, cross-entropy, grad, optax update."""
    model = build_model(config.model, spec.num_classes)
    mean = jnp.asarray(spec.mean) * 255.0
    std = jnp.asarray(spec.std) * 255.0

    @jax.jit
    def init(rng, images):
        variables = model.init(rng, jnp.zeros((1, *images.shape[1:])), train=False)
        return variables["params"], variables.get("batch_stats", {}), tx.init(variables["params"])

    def step(params, batch_stats, opt_state, images, labels):
        def loss_fn(p):
            x = (images.astype(jnp.float32) - mean) / std
            if batch_stats:
                logits, upd = model.apply({"params": p, "batch_stats": batch_stats}, x,
                                          train=True, mutable=["batch_stats"])
                new_stats = upd["batch_stats"]
            else:
                logits, new_stats = model.apply({"params": p}, x, train=True), batch_stats
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, new_stats

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    return init, jax.jit(step, donate_argnums=(0, 1, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--batch_size", type=int, default=0, help="0 = the config's")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    config = load_config_file(args.config)
    if args.batch_size:
        config.batch_size = args.batch_size
    program, spec, batch, state = one_device_experiment(config)
    devices = jax.devices()[:1]
    size = batch["image"].shape[1]
    host = {"image": np.asarray(batch["image"]), "label": np.asarray(batch["label"])}

    schedule = learning_rate_schedule(config.optimizer, 10_000, 100)
    init, step = hand_written_step(config, spec, make_optimizer(config.optimizer, schedule))
    params, stats, opt_state = init(jax.random.PRNGKey(0), batch["image"])
    images, labels = jax.device_put(host["image"]), jax.device_put(host["label"])

    def run_framework(n):
        nonlocal state
        for _ in range(n):
            state, metrics = program.train_step(state, batch)
        jax.block_until_ready((state, metrics))

    def run_hand(n):
        nonlocal params, stats, opt_state
        for _ in range(n):
            params, stats, opt_state, loss = step(params, stats, opt_state, images, labels)
        jax.block_until_ready((params, loss))

    run_framework(2)  # compile and warm up
    run_hand(2)
    times = {"framework": [], "hand_written": []}
    for _ in range(args.rounds):
        for name, fn in (("framework", run_framework), ("hand_written", run_hand)):
            start = time.perf_counter()
            fn(args.steps)
            times[name].append((time.perf_counter() - start) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["framework"] / med["hand_written"]
    print(f"model {config.model.name} ({program.num_params:,} params), batch {config.batch_size}, "
          f"input {size}x{size}x{spec.channels}, device {devices[0].device_kind}")
    for name, values in times.items():
        print(f"  {name:13s} median {1e3 * med[name]:9.3f} ms/step   "
              f"(rounds: {', '.join(f'{1e3 * v:.2f}' for v in values)})")
    print(f"  ratio framework / hand-written = {ratio:.4f}")
    print(json.dumps({"config": args.config, "batch_size": config.batch_size,
                      "framework_ms": 1e3 * med["framework"],
                      "hand_written_ms": 1e3 * med["hand_written"], "ratio": ratio}))


if __name__ == "__main__":
    main()
