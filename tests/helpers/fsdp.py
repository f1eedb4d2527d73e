"""Run a function on N real CPU processes (gloo) with ``torch.multiprocessing``, from a test, with a timeout.

The script runs in a subprocess through :func:`tests.helpers.ddp.run_ddp_script` (the harness environment:
1 torch thread, the network guard, a timeout that kills every rank). ``FSDP_PRELUDE`` gives the script
``launch(worker, nprocs)``: it picks a free loopback port and spawns ``worker(rank, world_size)`` in
``nprocs`` processes, each with a gloo process group initialised (``torchrun``-style env: ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and destroyed at the end. Write the script body at column
0; it ends with ``if __name__ == "__main__": launch(worker, 2)`` and writes what the test checks into files
under the cwd.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.helpers.ddp import DDPResult, run_ddp_script

FSDP_PRELUDE = """\
import socket
import torch.distributed as dist
import torch.multiprocessing as mp

def _run(rank, world_size, port, worker):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        worker(rank, world_size)
        dist.barrier()  # both ranks done before either tears down (a rank aborted once in teardown)
    finally:
        dist.destroy_process_group()

def launch(worker, nprocs=2):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_run, args=(nprocs, port, worker), nprocs=nprocs, join=True)
"""


def run_fsdp_script(script: str, workdir: Path, timeout: float = 60.0) -> DDPResult:
    """Run ``script`` (with :data:`FSDP_PRELUDE` prepended) in a subprocess; raise with its output on failure."""
    return run_ddp_script(FSDP_PRELUDE + textwrap.dedent(script), workdir, timeout=timeout)
