"""GPU check of the weight transports' CUDA code paths, on one GPU with only torch (no Ray, no vLLM).

    python benchmarks/gpu_transfer.py            # needs CUDA; prints what it checked and timings

NEVER RUN on a GPU yet. Without `pip install -e .` on the GPU machine, first link the areas into the
package:
`for d in rollout learner rewards envs pretrain; do ln -sfn ../$d answerkey/$d; done`.

1. CUDA IPC (`transfer.ipc_handles` / `open_ipc_handles`, the colocated path): a "learner" process
   holds a model on the GPU and sends IPC handles of its parameters to a "engine" process, which opens
   them without a copy and computes the checksums of what it sees; they must equal the learner's
   `expected_checksums`, and a change the learner makes in place must be visible to the engine.
2. NCCL (`BroadcastGroup` with backend "nccl"): one GPU can host only one NCCL rank, so this builds a
   group of size 1 and has rank 0 send (header + buckets) to itself: it exercises the NCCL group's
   construction and the send path, not a transfer between GPUs (that needs 2 GPUs; never run).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def tiny_model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(512, 512) for _ in range(8)]
    return torch.nn.Sequential(*layers).to(device)


def engine(queue_in, queue_out) -> None:
    from answerkey.rollout import transfer, weights

    handles = queue_in.get()
    start = time.perf_counter()
    tensors = dict(transfer.open_ipc_handles(handles, torch.cuda.current_device()))
    torch.cuda.synchronize()
    opened = time.perf_counter() - start
    queue_out.put(({n: weights.checksum(t) for n, t in tensors.items()}, opened))
    queue_in.get()  # the learner changed a weight in place
    queue_out.put(weights.checksum(tensors["0.weight"]))
    queue_in.get()


def check_ipc() -> None:
    from answerkey.rollout import transfer

    model = tiny_model("cuda")
    ctx = mp.get_context("spawn")
    to_engine, from_engine = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=engine, args=(to_engine, from_engine))
    proc.start()
    to_engine.put(transfer.ipc_handles(model.named_parameters()))
    got, opened = from_engine.get(timeout=120)
    assert got == transfer.expected_checksums(model), "IPC: the engine sees different weights"
    with torch.no_grad():
        model[0].weight.add_(1.0)
    torch.cuda.synchronize()
    to_engine.put("changed")
    assert from_engine.get(timeout=60) == transfer.expected_checksums(model)["0.weight"], "IPC view is a copy"
    to_engine.put("done")
    proc.join(timeout=60)
    print(f"[ipc] {len(got)} tensors opened in {opened * 1e3:.1f} ms; checksums equal; in-place change "
          "visible: OK")


def check_nccl_group() -> None:
    import socket

    from answerkey.rollout import transfer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = torch.distributed.TCPStore("127.0.0.1", port, None, is_master=True, wait_for_workers=False)
    group = transfer.BroadcastGroup(transfer.GroupSpec("127.0.0.1", port, 1, "nccl", 60), 0)
    model = tiny_model("cuda")
    start = time.perf_counter()
    sent = group.send(model.named_parameters(), version=1, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(f"[nccl] group of 1 on {group.device}: sent {sent / 1e6:.1f} MB (bf16) in {elapsed * 1e3:.1f} ms: "
          "OK")
    del store


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    check_ipc()
    check_nccl_group()
