"""Multi-process detection, and a real two-process jax.distributed start on 127.0.0.1."""
import json
import os
import socket
import subprocess
import sys

import pytest

from mappa_jax import distributed


def test_single_process_environments_do_not_initialise():
  assert distributed.detect({}) is None
  assert distributed.detect({"SLURM_NTASKS": "1", "OMPI_COMM_WORLD_SIZE": "1"}) is None
  assert distributed.detect({"MAPPA_COORDINATOR_ADDRESS": "h:1", "MAPPA_NUM_PROCESSES": "1",
                             "MAPPA_PROCESS_ID": "0"}) is None


def test_cluster_and_explicit_environments():
  assert distributed.detect({"SLURM_NTASKS": "4"}) == {}
  assert distributed.detect({"OMPI_COMM_WORLD_SIZE": "2"}) == {}
  assert distributed.detect({"TPU_WORKER_HOSTNAMES": "w0,w1"}) == {}
  assert distributed.detect({"MAPPA_COORDINATOR_ADDRESS": "h:1", "MAPPA_NUM_PROCESSES": "2",
                             "MAPPA_PROCESS_ID": "1"}) == {
                                 "coordinator_address": "h:1", "num_processes": 2,
                                 "process_id": 1}


@pytest.mark.parametrize("env,needle", [
    ({"MAPPA_COORDINATOR_ADDRESS": "h:1"}, "MAPPA_NUM_PROCESSES"),
    ({"MAPPA_COORDINATOR_ADDRESS": "h:1", "MAPPA_NUM_PROCESSES": "two",
      "MAPPA_PROCESS_ID": "0"}, "integers"),
    ({"MAPPA_COORDINATOR_ADDRESS": "h:1", "MAPPA_NUM_PROCESSES": "2",
      "MAPPA_PROCESS_ID": "2"}, "MAPPA_PROCESS_ID=2"),
])
def test_bad_explicit_settings_name_the_variable(env, needle):
  with pytest.raises(ValueError, match=needle):
    distributed.detect(env)


# The child writes its report to a file: Gloo's C++ threads print connection notices on the
# same stdout, and can land in the middle of a line printed from Python.
_CHILD = """
import json, sys
from mappa_jax import distributed
assert distributed.initialize()
import jax, jax.numpy as jnp
from jax.experimental import multihost_utils
total = multihost_utils.process_allgather(jnp.asarray([jax.process_index() + 1])).sum()
open(sys.argv[1], "w").write(json.dumps({**distributed.process_info(), "total": int(total)}))
jax.distributed.shutdown()
"""


def test_two_processes_form_one_runtime(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = []
  for pid in range(2):
    env = {**os.environ, "MAPPA_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
           "MAPPA_NUM_PROCESSES": "2", "MAPPA_PROCESS_ID": str(pid), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    procs.append(subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / f"{pid}.json")],
                                  env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  try:
    for proc in procs:
      _, err = proc.communicate(timeout=120)
      assert proc.returncode == 0, err[-2000:]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  infos = [json.loads((tmp_path / f"{pid}.json").read_text()) for pid in range(2)]
  assert sorted(i["process_index"] for i in infos) == [0, 1]
  for info in infos:
    assert info["process_count"] == 2 and info["device_count"] == 4
    assert info["local_device_count"] == 2 and info["total"] == 3
