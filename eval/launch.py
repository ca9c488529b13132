"""Commands under `accelerate launch` (or torchrun): each process takes its share of independent cells.

The launcher starts N copies of a command with RANK, LOCAL_RANK and WORLD_SIZE set. Cells of a benchmark are
independent erasures, so no process group is needed: each process runs every N-th cell on its own GPU as a
single process, writes `shards/<rank>.json` when it is done (or failed, with the reason), and the first process
waits for all of them before it gathers the tables.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LAUNCH_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def launched_shard(environ=os.environ) -> tuple[int, int]:
    """(this process's rank, processes) under `accelerate launch` or torchrun (RANK, WORLD_SIZE), else (0, 1).

    A launched process then works alone on its share of the cells: each erasure is one process's, so the engine's
    Accelerator must not join the launcher's process group. The launcher's variables are removed, and the process
    keeps its own GPU (LOCAL_RANK, among CUDA_VISIBLE_DEVICES when the launcher set them) as the only one it sees.
    """
    processes = int(environ.get("WORLD_SIZE") or 1)
    if processes <= 1:
        return 0, 1
    rank, local = int(environ.get("RANK") or 0), int(environ.get("LOCAL_RANK") or 0)
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    environ["CUDA_VISIBLE_DEVICES"] = visible[local % len(visible)] if visible else str(local)
    for name in LAUNCH_VARIABLES:
        environ.pop(name, None)
    return rank, processes


def shard_marker(out: Path, rank: int) -> Path:
    return out / "shards" / f"{rank}.json"


def wait_for_shards(out: Path, processes: int, poll_seconds: float = 10.0) -> None:
    """Block until every process has written its marker; a failed process's reason is raised (RuntimeError)."""
    import time

    from tqdm.auto import tqdm

    with tqdm(total=processes, desc="processes done", unit="process") as bar:
        while True:
            markers = [shard_marker(out, r) for r in range(processes)]
            done = [json.loads(m.read_text()) for m in markers if m.exists()]
            bar.n = len(done)
            bar.refresh()
            failed = [d for d in done if d["status"] != "done"]
            if failed:
                raise RuntimeError(f"process {failed[0]['rank']} failed: {failed[0]['error']}")
            if len(done) == processes:
                return
            time.sleep(poll_seconds)
