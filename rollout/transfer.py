"""Weight transfer from the learner to the rollout engines: one interface, three transports, one checksum.

    transport = make_transport("gloo", learner)          # or "object_store" (default), "nccl"
    refs = transport.push({0: worker_0, 1: worker_1}, version=3)   # {index: ref -> {name: checksum}}
    # the loop compares each worker's checksums with the learner's (Loop._load_and_verify)

- `object_store` (CPU, any): `learner.named_arrays()` -> one Ray object -> `load_weights`. Run by the CPU
  tests.
- `gloo` (CPU processes, any nodes): `BroadcastGroup`, a torch.distributed broadcast from rank 0. Run by
  tests/test_transfer.py.
- `nccl` (GPUs, the learner and the engines on different cards): the same `BroadcastGroup` code with backend
  "nccl". **Never run** (no GPU here).

Colocated on one GPU (`placement.mode = "colocate"`), weights go through the object store: NCCL cannot
join two ranks on one device.

The broadcast protocol is self-describing: rank 0 sends a JSON header (version, names, shapes, dtypes)
and then the tensors packed into flat buckets of one dtype (`bucket_plan`), so a receiver needs only
the group, not the learner's model. A group is its own `ProcessGroupGloo`/`ProcessGroupNCCL` built on a
`TCPStore` that the driver hosts: it never touches the default process group, which belongs to the
learner's FSDP (or to vLLM inside its workers).

Checksums (`rollout.weights.checksum`: blake2b of the float32 bytes, per Hugging Face parameter name)
are computed by each side from what it actually holds, never from the bytes in flight:

- `...self_attn.{q,k,v}_proj.weight` / `.bias`: vLLM holds one `...self_attn.qkv_proj.weight`; its rows
  are split in q, k, v order (`hf_views`) and checksummed under the HF names.
- `...mlp.{gate,up}_proj.weight`: vLLM's `...mlp.gate_up_proj.weight`, rows split in gate, up order.
- `model.embed_tokens.weight`, `lm_head.weight` (V rows): vLLM pads the rows to a multiple of 64; the
  first V rows are checksummed.
- `lm_head.weight` tied to the embedding: not a separate parameter on either side; listed once, under
  the embedding.
- fp32 master weights, bf16 engine (vLLM on GPU): the learner's side is `weights.checksums(model,
  torch.bfloat16)` (cast, then hash).

On CPU the loop compares fp32 with fp32. vLLM with tensor parallelism > 1 shards these rows across ranks;
`hf_views` handles tensor_parallel_size = 1 only (the vLLM adapter refuses more, rather than verify half a
model).

Not here: Ray Direct Transport, vLLM's native `weight_transfer_config` backends, delta/sparse updates.

Used by the driver (`make_transport`), the rollout worker and vLLM engine (the receiving end), and the
FSDP learner (`GroupSpec` for its own process group's rendezvous).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from answerkey.handles import call
from answerkey.rollout import weights

TRANSPORTS = ("object_store", "gloo", "nccl")
BUCKET_BYTES = 256 * 1024**2  # flat buffer per broadcast; bounds the receiver's extra memory
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}  # vLLM -> HF


# -- checksums on each side ------------------------------------------------------------------------


def hf_views(engine_params: Iterable[tuple[str, torch.Tensor]],
             shapes: Mapping[str, Sequence[int]]) -> Iterator[tuple[str, torch.Tensor]]:
    """An engine's parameters as (HF name, view): fused vLLM tensors split, padded vocab rows cut.

    `shapes` are the learner's {HF name: shape}. A fused parameter (`qkv_proj`, `gate_up_proj`) is split
    along dim 0 in the order of `FUSED` by the HF parts' row counts; any other parameter is cut to the
    HF row count (vLLM pads the vocabulary). Engine parameters with no HF counterpart are skipped, so a
    parameter the learner has and the engine lacks shows up as a missing checksum.
    """
    for name, tensor in engine_params:
        fused = next((f for f in FUSED if f".{f}." in name), None)
        if fused is None:
            if name in shapes:
                yield name, tensor[: shapes[name][0]] if tensor.dim() else tensor
            continue
        start = 0
        for part in FUSED[fused]:
            hf_name = name.replace(f".{fused}.", f".{part}.")
            if hf_name not in shapes:
                raise KeyError(f"engine parameter {name!r} is fused from {FUSED[fused]}, but the learner "
                               f"has no {hf_name!r}")
            rows = shapes[hf_name][0]
            yield hf_name, tensor[start : start + rows]
            start += rows
        if start != tensor.shape[0]:
            raise ValueError(f"engine parameter {name!r} has {tensor.shape[0]} rows, its HF parts {start}")


def engine_checksums(engine_params: Iterable[tuple[str, torch.Tensor]],
                     shapes: Mapping[str, Sequence[int]]) -> dict[str, str]:
    """{HF name: checksum} of what an engine holds (see `hf_views`)."""
    return {name: weights.checksum(view) for name, view in hf_views(engine_params, shapes)}


# -- broadcast over torch.distributed (gloo on CPU, NCCL on GPU) -------------------------------------


@dataclass(frozen=True)
class GroupSpec:
    """Where a weight group rendezvouses: the driver's TCPStore, the member count, the backend."""

    host: str
    port: int
    world_size: int  # the learner (rank 0) + the receiving engines
    backend: str = "gloo"
    timeout_s: float = 300.0


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    dtype: str


def bucket_plan(entries: Sequence[Entry], bucket_bytes: int = BUCKET_BYTES) -> list[list[Entry]]:
    """Consecutive entries of one dtype, packed until a bucket would exceed `bucket_bytes` (a larger tensor
    gets its own)."""
    buckets: list[list[Entry]] = []
    size = 0
    for entry in entries:
        nbytes = _numel(entry.shape) * DTYPES[entry.dtype].itemsize
        if not buckets or buckets[-1][0].dtype != entry.dtype or size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(entry)
        size += nbytes
    return buckets


class BroadcastGroup:
    """One member of a weight-broadcast group; rank 0 sends, every other rank receives.

        group = BroadcastGroup(spec, rank)                # all members call this at the same time
        group.send(model.named_parameters(), version=3, dtype=torch.bfloat16)   # rank 0
        version, pairs = group.receive()                  # ranks 1..N: [(name, tensor)], on group.device
    """

    def __init__(self, spec: GroupSpec, rank: int, device: torch.device | str | None = None):
        if spec.backend not in ("gloo", "nccl"):
            raise ValueError(f"weight group backend must be 'gloo' or 'nccl', got {spec.backend!r}")
        self.spec, self.rank = spec, rank
        timeout = datetime.timedelta(seconds=spec.timeout_s)
        store = torch.distributed.TCPStore(spec.host, spec.port, spec.world_size, is_master=False,
                                           timeout=timeout)
        if spec.backend == "gloo":
            self.device = torch.device("cpu")
            self.pg = torch.distributed.ProcessGroupGloo(store, rank, spec.world_size, timeout)
        else:  # never run: needs CUDA. NCCL binds the group to the current device.
            self.device = torch.device(device or f"cuda:{torch.cuda.current_device()}")
            torch.cuda.set_device(self.device)
            options = torch.distributed.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.pg = torch.distributed.ProcessGroupNCCL(store, rank, spec.world_size, options)

    def _broadcast(self, tensor: torch.Tensor) -> None:
        self.pg.broadcast(tensor, root=0).wait()

    def send(self, named: Iterable[tuple[str, torch.Tensor]], version: int, dtype: torch.dtype | None = None,
             bucket_bytes: int = BUCKET_BYTES) -> int:
        """Broadcast the header and every tensor (cast to `dtype`, when given); returns the payload bytes."""
        if self.rank != 0:
            raise RuntimeError(f"rank {self.rank} cannot send: rank 0 (the learner) sends")
        tensors = {name: t.detach().to(dtype) if dtype else t.detach() for name, t in named}
        entries = [Entry(n, tuple(t.shape), _dtype_name(t.dtype, n)) for n, t in tensors.items()]
        header = json.dumps({"version": version, "bucket_bytes": bucket_bytes,
                             "entries": [[e.name, list(e.shape), e.dtype] for e in entries]}).encode()
        self._broadcast(torch.tensor([len(header)], dtype=torch.int64, device=self.device))
        self._broadcast(torch.frombuffer(bytearray(header), dtype=torch.uint8).to(self.device))
        sent = 0
        for bucket in bucket_plan(entries, bucket_bytes):
            flat = torch.cat([tensors[e.name].reshape(-1).to(self.device) for e in bucket])
            self._broadcast(flat)
            sent += flat.numel() * flat.element_size()
        return sent

    def receive(self) -> tuple[int, list[tuple[str, torch.Tensor]]]:
        """The sender's version and its tensors, as views into the received buckets."""
        if self.rank == 0:
            raise RuntimeError("rank 0 sends; it cannot receive")
        length = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._broadcast(length)
        raw = torch.empty(int(length.item()), dtype=torch.uint8, device=self.device)
        self._broadcast(raw)
        header = json.loads(bytes(raw.cpu().tolist()).decode())
        entries = [Entry(n, tuple(s), d) for n, s, d in header["entries"]]
        out = []
        for bucket in bucket_plan(entries, header["bucket_bytes"]):
            flat = torch.empty(sum(_numel(e.shape) for e in bucket), dtype=DTYPES[bucket[0].dtype],
                               device=self.device)
            self._broadcast(flat)
            offset = 0
            for e in bucket:
                out.append((e.name, flat[offset : offset + _numel(e.shape)].view(e.shape)))
                offset += _numel(e.shape)
        return header["version"], out


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _dtype_name(dtype: torch.dtype, name: str) -> str:
    for key, value in DTYPES.items():
        if value == dtype:
            return key
    raise TypeError(f"parameter {name!r} has dtype {dtype}; the weight broadcast carries {sorted(DTYPES)}")


# -- the Ray side: transports the driver uses ------------------------------------------------------


class Transport(Protocol):
    """Moves the learner actor's weights into worker actors; each returned ref resolves to the worker's
    checksums."""

    def publish(self) -> None:
        """Called once per sync, before `push`: take the learner's current weights."""
        ...

    def push(self, workers: Mapping[int, Any], version: int) -> dict[int, Any]: ...


def make_transport(name: str, learner: Any) -> Transport:
    if name == "object_store":
        return ObjectStoreTransport(learner)
    if name in ("gloo", "nccl"):
        return BroadcastTransport(learner, name)
    raise ValueError(f"rollout.transport must be one of {TRANSPORTS}, got {name!r}")


class ObjectStoreTransport:
    """The learner's arrays as one object in Ray's object store, read zero-copy by every worker; with plain
    objects in one process (answerkey/local.py), the same arrays handed to each worker directly."""

    def __init__(self, learner: Any):
        self.learner, self.ref = learner, None

    def publish(self) -> None:
        self.ref = call(self.learner, "named_arrays")

    def push(self, workers: Mapping[int, Any], version: int) -> dict[int, Any]:
        return {i: call(w, "load_weights", self.ref, version) for i, w in workers.items()}


class BroadcastTransport:
    """A torch.distributed broadcast from the learner (rank 0) to the workers; the group is re-formed
    whenever the set of workers changes (a restarted worker gets its own group for its first load)."""

    def __init__(self, learner: Any, backend: str, timeout_s: float = 300.0):
        self.learner, self.backend, self.timeout_s = learner, backend, timeout_s
        self.members: tuple[Any, ...] = ()
        self.store = None  # the driver hosts the rendezvous store for the group's lifetime
        self.sending = None  # ref of the learner's last send; checked before the next

    def publish(self) -> None:
        pass  # the learner sends straight from its parameters in `push`

    def push(self, workers: Mapping[int, Any], version: int) -> dict[int, Any]:
        import ray

        ids = tuple(w._actor_id for w in workers.values())
        if self.sending is not None:
            try:
                ray.get(self.sending)
            except ray.exceptions.RayTaskError:
                if ids == self.members:
                    raise  # the learner's send to this very group failed
                # else: a member died mid-broadcast (the driver restarts it); its old group is discarded below
        if ids != self.members:
            self._form_group(list(workers.values()))
            self.members = ids
        refs = {i: w.__ray_call__.remote(_worker_receive) for i, w in workers.items()}
        self.sending = self.learner.__ray_call__.remote(_learner_send, version)
        return refs

    def _form_group(self, workers: list[Any]) -> None:
        import ray

        host = ray.util.get_node_ip_address()
        self.store = torch.distributed.TCPStore(host, 0, len(workers) + 1, is_master=True,
                                                wait_for_workers=False,
                                                timeout=datetime.timedelta(seconds=self.timeout_s))
        spec = GroupSpec(host, self.store.port, len(workers) + 1, self.backend, self.timeout_s)
        refs = [self.learner.__ray_call__.remote(_join, spec, 0)]
        refs += [w.__ray_call__.remote(_join, spec, rank) for rank, w in enumerate(workers, start=1)]
        ray.get(refs)


# Run inside the actors by `__ray_call__` (Ray's API for calling a function on an actor's instance), so
# neither the Learner nor the RolloutWorker class carries transport code. The group is kept on the instance.


def _join(holder: Any, spec: GroupSpec, rank: int) -> None:
    if getattr(holder, "full_parameters", None) and holder.rank != 0:
        return  # an FSDP learner (learner/fsdp.py) is called on every rank; rank 0 alone is in the group
    engine = getattr(holder, "engine", None)
    if hasattr(engine, "join_weight_group"):  # vLLM: the receiving end lives in its GPU worker process
        engine.join_weight_group(spec, rank)
    else:
        holder.weight_group = BroadcastGroup(spec, rank)


def _learner_send(learner: Any, version: int) -> int:
    if getattr(learner, "full_parameters", None):  # FSDP: every rank takes part in the gathers, rank 0 sends
        if learner.rank != 0:
            learner.join_gathers()
            return 0
        return learner.weight_group.send(learner.full_parameters(), version, dtype=torch.float32)
    return learner.weight_group.send(learner.model.named_parameters(), version, dtype=torch.float32)


def _worker_receive(worker: Any) -> dict[str, str]:
    engine = worker.engine
    if hasattr(engine, "receive_weights"):  # vLLM: receive and load inside its worker
        engine.begin_weight_update()
        engine.finish_weight_update(engine.receive_weights())
        engine.reset_prefix_cache()
        return engine.weights_checksum()
    version, pairs = worker.weight_group.receive()
    return worker.load_weights(pairs, version)
