"""``trainer.num_nodes`` > 1 without a multi-node launcher is refused at once (review: on one
machine it waited for the other nodes until the rendezvous timed out, 30 minutes), while the
launches Lightning knows keep working: SLURM, torchrun/torchelastic, and its manual launch
(NODE_RANK, MASTER_ADDR)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import config_text
from stmclf.errors import ConfigError
from stmclf.training import fit

CLUSTER_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_RANK",
                "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME", "LSB_JOBID", "LSB_DJOB_RANKFILE",
                "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_SIZE", "KUBERNETES_PORT", "RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def single_machine(monkeypatch):
    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_two_nodes_on_one_machine_fail_at_once(tmp_path, image_folder):
    text = config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=1)
    (tmp_path / "c.yaml").write_text(text.replace("trainer:\n", "trainer:\n  accelerator: cpu\n  num_nodes: 2\n"))
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS}
    proc = subprocess.run([sys.executable, "-m", "stmclf", "fit", "--config", str(tmp_path / "c.yaml")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240)
    lines = proc.stderr.strip().splitlines()  # refused before the dataset is listed: no log line before it
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("stmclf: error: trainer.num_nodes: 2 machines asked, but this "
                                                   "process was not started by a multi-node launcher"), lines
    assert "srun" in lines[0] and "torchrun" in lines[0] and "NODE_RANK, MASTER_ADDR" in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("env", [
    {},
    {"MASTER_ADDR": "10.0.0.1"},                 # no rank: which node is this?
    {"NODE_RANK": "1"},                          # node 1 without the address of node 0
    {"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "interactive"},  # salloc shell: Lightning does not take it for srun
], ids=["nothing", "MASTER_ADDR alone", "NODE_RANK 1 alone", "interactive SLURM shell"])
def test_refused_without_a_launcher(single_machine, env):
    for key, value in env.items():
        single_machine.setenv(key, value)
    for nodes in (2, "2"):  # a command-line override may give text
        with pytest.raises(ConfigError, match=r"^trainer\.num_nodes: 2 machines asked"):
            fit._check_num_nodes({"num_nodes": nodes})


@pytest.mark.parametrize("env", [
    {"TORCHELASTIC_RUN_ID": "job1", "WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"},
    {"SLURM_NTASKS": "4", "SLURM_JOB_NAME": "train", "SLURM_NODEID": "0", "SLURM_PROCID": "0",
     "SLURM_LOCALID": "0"},
    {"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"},
    {"NODE_RANK": "0", "MASTER_PORT": "29500"},  # node 0 is the master: its address defaults to itself
], ids=["torchrun", "srun", "manual node 1", "manual node 0"])
def test_accepted_under_a_launcher(single_machine, env):
    for key, value in env.items():
        single_machine.setenv(key, value)
    fit._check_num_nodes({"num_nodes": 2})


@pytest.mark.parametrize("value", [0, -1, 1.5, "two", True])
def test_num_nodes_must_be_a_positive_integer(single_machine, value):
    with pytest.raises(ConfigError, match=r"^trainer\.num_nodes: expecting a number of machines"):
        fit._check_num_nodes({"num_nodes": value})


def test_one_node_needs_nothing(single_machine):
    fit._check_num_nodes({"num_nodes": 1})


def test_a_kubeflow_pod_without_torchrun_is_told_the_torchrun_command(single_machine):
    """A PyTorchJob pod has the job's variables but no launcher Lightning detects (nor may it give
    ``trainer.plugins``): the refusal says how to start the pod so that it works."""
    pod = {"KUBERNETES_PORT": "tcp://10.96.0.1:443", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456",
           "WORLD_SIZE": "2", "RANK": "1"}
    for key, value in pod.items():
        single_machine.setenv(key, value)
    with pytest.raises(ConfigError) as refused:
        fit._check_num_nodes({"num_nodes": 2})
    message = str(refused.value)
    assert message.startswith("trainer.num_nodes: 2 machines asked in a Kubeflow PyTorchJob pod (RANK=1 of "
                              "WORLD_SIZE=2) started without torchrun"), message
    assert "torchrun --nnodes $WORLD_SIZE --node-rank $RANK --nproc-per-node <trainer.devices> " \
           "--master-addr $MASTER_ADDR --master-port $MASTER_PORT $(command -v stmclf) fit" in message
    single_machine.delenv("KUBERNETES_PORT")  # not a pod: the general refusal
    with pytest.raises(ConfigError, match=r"^trainer\.num_nodes: 2 machines asked, but this process was not"):
        fit._check_num_nodes({"num_nodes": 2})
    single_machine.setenv("KUBERNETES_PORT", pod["KUBERNETES_PORT"])  # the same pod under torchrun: accepted
    for key, value in {"TORCHELASTIC_RUN_ID": "job", "LOCAL_RANK": "0", "GROUP_RANK": "1",
                         "LOCAL_WORLD_SIZE": "1"}.items():
        single_machine.setenv(key, value)
    fit._check_num_nodes({"num_nodes": 2})
