"""One process of a local multi-process job, for the tests (jax.distributed over gloo).

    python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES WORKDIR \
        DATA_DIR STEPS [key=value ...]
"""

import os
import sys

process_id, num_processes, port, devices = (int(a) for a in sys.argv[1:5])
workdir, data_dir, steps = sys.argv[5], sys.argv[6], int(sys.argv[7])
os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "  # the tests' fast compiles
                           f"--xla_force_host_platform_device_count={devices}").strip()

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                           num_processes=num_processes, process_id=process_id,
                           initialization_timeout=60)

from nme_train.cli import CHECKOUT, load_config_file  # noqa: E402
from nme_train.train.loop import train_and_evaluate  # noqa: E402

config = load_config_file(os.path.join(CHECKOUT, "configs", "default.py"))
config.data.data_dir = data_dir
config.model.features, config.model.hidden = (8, 16), (32,)  # conftest.cli_args's run
config.batch_size = 32
config.num_epochs, config.num_train_steps = -1, steps
config.checkpoint.every_steps, config.log_every_steps, config.eval_every_steps = 100, 10, 0
for item in sys.argv[8:]:
    key, value = item.split("=", 1)
    *path, last = key.split(".")
    target = config
    for part in path:
        target = target[part]
    target[last] = type(target[last])(value)
result = train_and_evaluate(config, workdir)
print(f"process {process_id} done: preempted={result.get('preempted', False)} "
      f"step={result.get('step')} accuracy={result.get('eval/accuracy')}", flush=True)
