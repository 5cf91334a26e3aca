"""A rank whose peer went away: one clear error, and the launcher names the cause first.
Pure logic here; the kill -9 tests in test_distributed.py and test_fsdp.py run it for real."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

from ragtune.cli.tune_cmd import _likely_consequence
from ragtune.core.errors import PeerLost
from ragtune.tuner.distributed import Parallel, lost_peer

GLOO = (
    "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
    "[127.0.0.1]:60094: Connection reset by peer. This is typically caused by a remote "
    "worker hanging or bugs in the application."
)


def test_transport_errors_are_a_lost_peer_and_others_are_not():
    assert lost_peer(RuntimeError(GLOO))
    assert lost_peer(RuntimeError("NCCL error: remote process exited or there was a network error"))
    assert lost_peer(dist.DistNetworkError("recv failed"))
    assert not lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not lost_peer(ValueError("Connection reset by peer"))  # not from a collective


def test_a_rank_names_itself_and_the_lost_peer():
    with pytest.raises(PeerLost) as caught, Parallel(rank=1, world=2).naming_lost_peers():
        raise RuntimeError(GLOO)
    message = caught.value.message
    assert message.startswith("rank 1: lost contact with another training process")
    assert "Connection reset by peer" in message and "\n" not in message
    assert isinstance(caught.value.__cause__, RuntimeError)


@pytest.mark.parametrize(
    ("parallel", "err"),
    [
        (Parallel(rank=1, world=2), RuntimeError("mat1 and mat2 shapes cannot be multiplied")),
        (Parallel(), RuntimeError(GLOO)),  # alone, there is no peer to lose
    ],
)
def test_other_errors_pass_through(parallel, err):
    with pytest.raises(RuntimeError) as caught, parallel.naming_lost_peers():
        raise err
    assert caught.value is err


def test_the_launcher_names_the_likely_cause_first():
    kill, abort, term = -signal.SIGKILL, -signal.SIGABRT, -signal.SIGTERM
    assert sorted([term, 1, abort, kill], key=_likely_consequence) == [kill, abort, 1, term]


# Two real gloo ranks: rank 1 leaves after the barrier (exits, or kills itself with -9);
# rank 0's next collective (or the barrier's end) then fails inside ``naming_lost_peers``.
PEER = """
import os, signal, sys, time
import torch, torch.distributed as dist
from ragtune.core.errors import PeerLost
from ragtune.tuner.distributed import Parallel
p = Parallel.from_env(os.environ)
p.start("cpu")
try:
    with p.naming_lost_peers():  # the barrier too: rank 1 may be gone before it completes
        p.barrier()
        if p.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL) if sys.argv[1] == "kill" else os._exit(0)
        time.sleep(1.0)
        dist.all_reduce(torch.ones(4))
except PeerLost as e:
    print(e.message)
    sys.exit(3)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["exit", "kill"])
def test_a_real_rank_whose_peer_left_says_so(how, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PEER, how],
            env=env | {"RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    out, err = procs[0].communicate(timeout=90)
    procs[1].wait(30)
    assert procs[0].returncode == 3, err[-3000:]
    assert out.startswith("rank 0: lost contact with another training process"), out
