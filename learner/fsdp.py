"""The FSDP2 learner: one rank of a group of N processes that shard the policy (and the KL reference)
with `torch.distributed.fsdp.fully_shard` and run the same GRPO step as `Learner`. A plain class;
learner/group.py starts N of them as Ray actors, and tests start them as plain processes.

    learner = ShardedLearner(path, cfg.learner, sampling, total_steps, rank=r,
                             spec=GroupSpec(host, port, N, "gloo"))
    metrics = learner.step(groups)          # on every rank, the same groups; the same metrics come back
    pairs = learner.named_arrays()          # gathered full weights on rank 0 ([] on the others)
    learner.save_checkpoint(root, step, run_state, config_json, keep)   # DCP, learner/dcp.py

What is FSDP-specific is only here; the GRPO math is `Learner`'s (composition: a `Learner` over the
sharded module, given `Ranks` so it trains on this rank's rows, learner/shard.py):
- Sharding: each decoder layer (the classes in the model's `_no_split_modules`, as verl and torchtune
  pick them) is one FSDP unit, the root holds the embedding, final norm and LM head (tied or not).
  Parameters are DTensors sharded on dim 0 over a 1-D device mesh; the optimizer (AdamW) and its state
  are sharded with them; `clip_grad_norm_` computes the norm over all shards.
- Gradients are summed over ranks, not averaged (`set_gradient_divide_factor(1)` with sum-only
  collectives, which gloo needs: its reduce-scatter has no PREMUL_SUM), because each rank's loss is
  already divided by the whole batch's token / sequence count.
- `learner.precision = "bf16"`: `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`: the sharded
  fp32 parameters are the master weights, gathered in bf16 for compute, gradients reduced in fp32.
- `learner.gradient_checkpointing`: each decoder layer's forward is recomputed in the backward
  (`checkpoint_layers`; parameter names unchanged, so checksums and checkpoints are unaffected).
- Backend: gloo on CPU (what CI runs), NCCL on GPUs (one GPU per rank) — the same code.
- A rank that raises in a collective call writes its error to the group's store and aborts its process
  group, so the other ranks fail at once (instead of waiting in a collective for the timeout), and every
  rank's error names all the ranks' errors it could read.

Not here: HSDP / tensor parallelism, CPU offload, meta-device init (every rank loads the whole HF
checkpoint on CPU before sharding), sequence packing.
"""

from __future__ import annotations

import copy
import datetime
import functools
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from answerkey.config import LearnerConfig
from answerkey.envs.base import Trajectory
from answerkey.learner import dcp
from answerkey.learner.learner import Learner
from answerkey.learner.shard import Ranks
from answerkey.rollout import weights
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.transfer import GroupSpec

ERROR_KEY = "answerkey/learner_error/"  # + rank: the first error of that rank, in the group's store
ERROR_WAIT_S = 5.0  # how long a failing rank waits to read the other ranks' errors


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: modules whose class is named in `_no_split_modules` (HF's own list)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__} lists no decoder-layer class in `_no_split_modules` "
                         f"(got {sorted(names)}); FSDP shards one unit per decoder layer")
    return layers


# the KV-cache argument of a decoder layer, by transformers version
CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


def checkpoint_layers(model: torch.nn.Module) -> None:
    """Gradient checkpointing: every decoder layer's activations are recomputed in the backward.

    The instance's `forward` is wrapped (non-reentrant `torch.utils.checkpoint`), not the module, so
    parameter names stay the Hugging Face ones, and FSDP's hooks (on `__call__`) are not re-run by the
    recomputation. Works in eval mode, unlike `gradient_checkpointing_enable`, which needs `model.train()`.
    The KV cache HF passes to each layer is dropped: the recomputation would append to it a second time.
    """
    for layer in decoder_layers(model):
        layer.forward = functools.partial(_checkpointed, layer.forward)


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():  # no backward to recompute for (reference, old logprobs, sync check)
        return forward(*args, **kwargs)
    kwargs |= {k: None for k in CACHE_KWARGS if k in kwargs}
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def shard_model(model: torch.nn.Module, mesh, precision: str) -> torch.nn.Module:
    """`fully_shard` each decoder layer, then the root; gradients summed over ranks (see the module doc)."""
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" \
        else MixedPrecisionPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


_JOINED: dict = {}  # this process's group: {"spec", "rank", "device", "store"} (a process joins one group)


def init_group(spec: GroupSpec, rank: int) -> tuple[torch.device, dist.Store]:
    """Join the learner group's default process group through the rendezvous store; this rank's device.

    A second call with the same spec and rank (another learner in the same processes, as in the tests)
    reuses the group.
    """
    if _JOINED:
        if (_JOINED["spec"], _JOINED["rank"]) != (spec, rank):
            raise RuntimeError(f"this process already is rank {_JOINED['rank']} of {_JOINED['spec']}; "
                               f"cannot join {spec} as {rank}")
        return _JOINED["device"], _JOINED["store"]
    timeout = datetime.timedelta(seconds=spec.timeout_s)
    device = torch.device("cpu")
    if spec.backend == "nccl":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    store = dist.TCPStore(spec.host, spec.port, spec.world_size + 1, is_master=False, timeout=timeout)
    dist.init_process_group(spec.backend, store=dist.PrefixStore("learner", store), rank=rank,
                            world_size=spec.world_size, timeout=timeout,
                            device_id=device if device.type == "cuda" else None)
    _JOINED.update(spec=spec, rank=rank, device=device, store=store)
    return device, store


class ShardedLearner:
    """Rank `rank` of an FSDP2 learner group; every public method is called on every rank, in the same
    order."""

    def __init__(self, path: str, cfg: LearnerConfig, sampling: SamplingParams, total_steps: int, rank: int,
                 spec: GroupSpec, reference_path: str | None = None, threads: int | None = None,
                 dtype: torch.dtype = torch.float32):
        """`dtype`: of the master weights (float32; tests use float64 for exact comparisons)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if threads:
            torch.set_num_threads(threads)
        hf_logging.disable_progress_bar()
        self.rank, self.world, self.cfg = rank, spec.world_size, cfg
        self.device, self.store = init_group(spec, rank)
        mesh = init_device_mesh(self.device.type, (self.world,))
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        reference = None
        if cfg.kl_coef > 0:  # the frozen initial policy, sharded the same way
            same = not reference_path or str(reference_path) == str(path)
            reference = (copy.deepcopy(policy) if same
                         else AutoModelForCausalLM.from_pretrained(reference_path, dtype=dtype))
            shard_model(reference.requires_grad_(False), mesh, cfg.precision)
        if cfg.gradient_checkpointing:
            checkpoint_layers(policy)
        self.model = shard_model(policy, mesh, cfg.precision)
        self.learner = Learner(self.model, cfg, sampling, total_steps, reference=reference,
                               ranks=Ranks(rank, self.world))
        self.tokenizer = AutoTokenizer.from_pretrained(path)

    # -- the Learner's interface, on every rank ----------------------------------------------------

    def step(self, groups: Sequence[Sequence[Trajectory]]) -> dict[str, float]:
        with self.collective("step"):
            return self.learner.step(groups)

    def logprobs_of(self, prompt: Sequence[int], completion: Sequence[int]) -> list[float]:
        with self.collective("logprobs_of"):
            return self.learner.logprobs_of(prompt, completion)

    def weights_nbytes(self) -> int:
        return self.learner.weights_nbytes()

    # -- full weights, gathered ----------------------------------------------------------------------

    def full_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, full fp32 tensor) per parameter, tied ones once; an all-gather each, so every rank
        must exhaust it. Only one gathered tensor at a time is alive unless the caller keeps them.

        Resharded first: after a forward without backward (the sync's logprobs check) the root keeps its
        parameters unsharded, and a numpy view of those (`named_arrays`) would pin storage FSDP frees later.
        """
        for module in self.model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
        for name, p in self.model.named_parameters():
            yield name, (p.full_tensor() if isinstance(p, DTensor) else p).detach()

    def join_gathers(self) -> None:
        """A rank's part in a `full_parameters` pass whose tensors only rank 0 uses: every gather, nothing
        kept."""
        deque(self.full_parameters(), maxlen=0)

    def named_arrays(self) -> list:
        """Rank 0: every parameter as a float32 numpy array (what the object store carries); others: []."""
        with self.collective("named_arrays"):
            if self.rank:
                self.join_gathers()
                return []
            return [(name, t.float().cpu().numpy()) for name, t in self.full_parameters()]

    def weights_checksum(self, dtype: str = "float32") -> dict[str, str]:
        """Rank 0: {name: checksum} of the full weights cast to `dtype`, as `Learner.weights_checksum`;
        others: {}."""
        with self.collective("weights_checksum"):
            if self.rank:
                self.join_gathers()
                return {}
            return {name: weights.checksum(t.to(getattr(torch, dtype))) for name, t in self.full_parameters()}

    # -- checkpoints (learner/dcp.py) ------------------------------------------------------------------

    def save_checkpoint(self, root: str, step: int, run_state: dict, config_json: str, keep: int) -> str:
        with self.collective("save_checkpoint"):
            return str(dcp.save(root, step, self, run_state, config_json, keep))

    def resume(self, path: str) -> None:
        with self.collective("resume"):
            dcp.load(Path(path), self)

    # -- failures --------------------------------------------------------------------------------------

    @contextmanager
    def collective(self, what: str):
        """Run a collective call; on an exception, tell the other ranks (store) and abort the group."""
        try:
            yield
        except Exception as exc:
            raise RuntimeError(self._fail(what, exc)) from exc

    def _fail(self, what: str, exc: Exception) -> str:
        own = f"{type(exc).__name__}: {exc}"[:2000]
        self.store.set(f"{ERROR_KEY}{self.rank}", own)
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None) or dist.destroy_process_group
        if dist.is_initialized():
            abort()  # the peers' pending collectives fail now instead of at the timeout
        errors, deadline = {self.rank: own}, time.monotonic() + ERROR_WAIT_S
        while len(errors) < self.world and time.monotonic() < deadline:
            for r in range(self.world):
                if r not in errors and self.store.check([f"{ERROR_KEY}{r}"]):
                    errors[r] = self.store.get(f"{ERROR_KEY}{r}").decode()
            time.sleep(0.05)
        listed = "; ".join(f"rank {r}: {e}" for r, e in sorted(errors.items()))
        return (f"FSDP learner rank {self.rank} of {self.world} failed in {what} (the group is aborted). "
                f"{listed}")
