"""GPU check of the NCCL weight broadcast's code path, on one GPU with only torch (no Ray, no vLLM).

    python benchmarks/gpu_transfer.py            # needs CUDA; prints what it checked and timings

NEVER RUN on a GPU yet. Without `pip install -e .` on the GPU machine, first link the areas into the
package:
`for d in rollout learner rewards envs pretrain; do ln -sfn ../$d answerkey/$d; done`.

NCCL (`BroadcastGroup` with backend "nccl"): one GPU can host only one NCCL rank, so this builds a
   group of size 1 and has rank 0 send (header + buckets) to itself: it exercises the NCCL group's
   construction and the send path, not a transfer between GPUs (that needs 2 GPUs; never run).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def tiny_model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(512, 512) for _ in range(8)]
    return torch.nn.Sequential(*layers).to(device)


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
    check_nccl_group()
