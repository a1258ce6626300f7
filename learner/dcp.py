"""Sharded checkpoints of the FSDP learner with torch.distributed.checkpoint (DCP), and their export to HF.

    dcp.save(root, step, learner, run_state, config_json, keep)  # on every rank; rank 0 returns the path
    dcp.load(path, learner)                                  # on every rank: weights, AdamW, schedule, RNG
    export(path, out)                                        # one process, no group: an HF directory
    answerkey export runs/r1/checkpoints/step_000010 runs/r1/hf   # the same, from the command line

One checkpoint directory (atomic exactly like learner/checkpoint.py, whose `begin`/`commit` it uses:
written under `.tmp-step_NNNNNN-<pid of rank 0>/`, every file fsynced, renamed, parent fsynced, pruned):

    dcp/          DCP shards: {"model": policy state dict, "optimizer": AdamW state}, each rank writes its
                  own `__<rank>_0.distcp`, rank 0 the `.metadata` (after every rank has written)
    hf/           config.json, generation_config.json, tokenizer files: what `export` needs besides weights
    learner.pt    lr schedule, optimizer-step counter, every rank's torch RNG state (and CUDA RNG on GPUs)
    run.pt        the loop's state (data position, engine RNGs), as in a full checkpoint
    config.json   the resolved run config

The state dicts come from `torch.distributed.checkpoint.state_dict.get_state_dict`, keyed by the
Hugging Face parameter names (FSDP2 keeps them), so `export` loads the shards straight into a plain
`AutoModelForCausalLM` built from `hf/config.json` in one process (DCP reads every rank's shard) and
saves it with `save_pretrained` (safetensors). DCP can also load into a group of a different size;
`--resume` refuses that anyway (the config, incl. learner.world_size, must be the checkpoint's).

On several nodes every rank must see the same `run.out_dir` (a shared filesystem). Not here: async
saves, saving only every k-th optimizer state, a DCP storage backend other than the filesystem.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dist_cp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from answerkey.learner import checkpoint

if TYPE_CHECKING:
    from answerkey.learner.fsdp import ShardedLearner


def save(root: str | Path, step: int, learner: ShardedLearner, run_state: dict, config_json: str,
         keep: int) -> Path:
    """Write checkpoint `step` under `root` from every rank; every rank returns the final path."""
    rank, inner = dist.get_rank(), learner.learner
    names = [None, None]
    if rank == 0:
        names = [str(p) for p in checkpoint.begin(root, step)]  # cleans partial ones, names the tmp dir
    dist.broadcast_object_list(names, src=0)
    tmp, final = Path(names[0]), Path(names[1])
    model_state, optim_state = get_state_dict(learner.model, inner.optimizer)
    # DCP fsyncs its files
    dist_cp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / "dcp")
    rngs: list = [None] * dist.get_world_size()
    cuda = learner.device.type == "cuda"
    own = torch.get_rng_state(), torch.cuda.get_rng_state(learner.device) if cuda else None
    dist.all_gather_object(rngs, own)
    if rank == 0:
        small = {"scheduler": inner.scheduler.state_dict(), "optimizer_steps": inner.optimizer_steps,
                 "torch_rng": [cpu for cpu, _ in rngs]}
        if cuda:
            small["cuda_rng"] = [gpu for _, gpu in rngs]
        torch.save(small, tmp / "learner.pt")
        torch.save(run_state | {"step": step}, tmp / "run.pt")
        (tmp / "config.json").write_text(config_json)
        save_hf_files(learner.model, learner.tokenizer, tmp / "hf")
        checkpoint.commit(tmp, final, keep)
    dist.barrier()  # no rank returns before the checkpoint is complete
    return final


def save_hf_files(model: torch.nn.Module, tokenizer, out: Path) -> None:
    """Everything of a Hugging Face directory but the weights."""
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load(path: Path, learner: ShardedLearner) -> None:
    """Load weights and AdamW state (resharded onto this group) and the schedule, counter and RNG."""
    inner = learner.learner
    if not (path / "dcp" / ".metadata").exists():
        raise FileNotFoundError(f"{path} is not a sharded (FSDP) checkpoint: no dcp/.metadata")
    # initializes AdamW's state (lr 0), which the load then overwrites
    model_state, optim_state = get_state_dict(learner.model, inner.optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dist_cp.load(state, checkpoint_id=path / "dcp")
    set_state_dict(learner.model, inner.optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])
    small = torch.load(path / "learner.pt", weights_only=True, map_location="cpu")
    if len(small["torch_rng"]) != dist.get_world_size():
        raise ValueError(f"checkpoint {path} was written by {len(small['torch_rng'])} learner ranks, "
                         f"this group has {dist.get_world_size()}")
    inner.scheduler.load_state_dict(small["scheduler"])
    inner.optimizer_steps = small["optimizer_steps"]
    torch.set_rng_state(small["torch_rng"][dist.get_rank()])
    if learner.device.type == "cuda" and "cuda_rng" in small:
        torch.cuda.set_rng_state(small["cuda_rng"][dist.get_rank()], learner.device)


def export(path: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """A sharded checkpoint -> a Hugging Face directory at `out` (config, safetensors, tokenizer), in one
    process.

    Written to `out.tmp` and renamed, so `out` is either absent or complete.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    path, out = Path(path), Path(out)
    if not (path / "dcp" / ".metadata").exists():
        full = (path / "model" / "config.json").exists()
        hint = " (a full checkpoint: its model/ already is one)" if full else ""
        raise FileNotFoundError(f"{path} is not a sharded checkpoint (no dcp/.metadata){hint}")
    if out.exists():
        raise FileExistsError(f"export target {out} exists; choose a new directory")
    hf = path / "hf"
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(hf), dtype=torch.float32)
    state = {"model": model.state_dict()}
    dist_cp.load(state, checkpoint_id=path / "dcp")  # no process group: this process reads every shard
    model.load_state_dict(state["model"])
    if (hf / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(hf)
    return checkpoint.save_model(out, model.to(dtype), AutoTokenizer.from_pretrained(hf))  # atomic, fsynced
