"""The object-storage stack the workdir layer builds on, against a local GCS emulator.

`gcs` starts gcp-storage-emulator (in memory) on the loopback address for the session
and points the clients at it: STORAGE_EMULATOR_HOST for gcsfs (which etils.epath uses
for gs:// paths), TENSORSTORE_GCS_HTTP_URL and GOOGLE_AUTH_TOKEN_FOR_TESTING for
tensorstore (which writes orbax's arrays). Nothing outside this machine is reached.
"""

import logging
import os
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.slow

BUCKET = "nme-test-bucket"


@pytest.fixture(scope="session")
def gcs():
    """gs://BUCKET served by a local emulator; yields its URL, restores the environment."""
    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://127.0.0.1:{port}"
    quiet = {name: logging.getLogger(name).level for name in ("gcp_storage_emulator", "gcsfs")}
    for name in quiet:  # per-request logs, and gcsfs asking for a bucket type it cannot get
        logging.getLogger(name).setLevel(logging.CRITICAL)
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x"}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    server.stop()


def test_orbax_saves_and_restores_exactly_through_the_emulator(gcs):
    import orbax.checkpoint as ocp

    tree = {"w": jnp.arange(12.0).reshape(3, 4), "b": {"c": jnp.ones(5, jnp.bfloat16)}}
    path = f"gs://{BUCKET}/orbax/ck"
    with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=2)) as mgr:
        for step in (1, 2, 3):
            scaled = jax.tree.map(lambda x, s=step: x * s, tree)
            mgr.save(step, args=ocp.args.StandardSave(scaled))
        mgr.wait_until_finished()
        assert mgr.all_steps() == [2, 3]  # the oldest deleted in the bucket
        restored = mgr.restore(3, args=ocp.args.StandardRestore(tree))
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(tree)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want) * 3)
        assert got.dtype == want.dtype


def test_epath_on_the_emulator_has_the_semantics_the_workdir_needs(gcs):
    """What a run directory relies on, checked rather than assumed: write then read, exists,
    listing a "directory" gives its direct children only (not a sibling sharing its prefix,
    not grandchildren), and removal."""
    from etils import epath

    root = epath.Path(f"gs://{BUCKET}/semantics")
    (root / "run" / "config.json").write_text('{"a": 1}')
    (root / "run" / "checkpoints" / "10" / "state").write_text("x")
    (root / "run2" / "final.json").write_text("{}")  # shares the prefix "run"
    assert (root / "run" / "config.json").read_text() == '{"a": 1}'
    assert (root / "run" / "config.json").exists() and not (root / "run" / "nope").exists()
    assert sorted(p.name for p in (root / "run").iterdir()) == ["checkpoints", "config.json"]
    assert sorted(p.name for p in root.iterdir()) == ["run", "run2"]
    (root / "run" / "config.json").unlink()
    assert not (root / "run" / "config.json").exists()
