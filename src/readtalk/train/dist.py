"""Data parallelism for the training stages, applied from outside the models.

    torchrun --nproc_per_node=8 -m readtalk.cli train dit --cache cache/x --out runs/dit ...

(docs/multigpu.md). Every stage runs unchanged under ``torchrun``: ``setup`` joins the process
group when ``WORLD_SIZE > 1`` (NCCL on CUDA, Gloo on CPU) and gives each process its device
(``cuda:LOCAL_RANK``); ``parallelize`` wraps a ``TrainStep`` (a model and the loss of one step)
in DDP, or shards a model with transformer ``blocks`` (the DiT) by FSDP2, per block and then the
root; the models know nothing of it.

Batches: every rank draws the whole global batch ``train.batch_size`` from the step's generator
(``step_rng(seed, step)``) and computes only its ``share`` of it, so N ranks with B / N rows each
take the same steps as one process with B rows. Each rank's loss is its share's mean (scaled
where the global mean is not the mean of the shares' means), and DDP / FSDP average gradients.

State: ``state_dict`` / ``load_state_dict`` go through ``torch.distributed.checkpoint``'s
full-state-dict helpers, so checkpoints hold the unwrapped module's keys whatever the
parallelism (gathered on rank 0, on the CPU, under FSDP2) and load into the wrapped model on
every rank.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import warnings
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from readtalk.errors import ReadtalkError
from readtalk.train.optim import OptimConfig

T = TypeVar("T")
FSDP_AUTO_PARAMS = 1_000_000_000  # parallel=auto shards models at least this large (paper DiT)


# ------------------------------------------------------------------------------- process group


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the process that logs, evaluates (under DDP) and writes files."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def main_first(build: Callable[[bool], T], progress: bool) -> T:
    """``build(progress)`` on rank 0 first (it may write a cache file), then on the other ranks,
    which find that file and read it, quietly."""
    if is_main():
        out = build(progress)
    barrier()
    if not is_main():
        out = build(False)
    return out


def setup(device: str = "auto") -> torch.device:
    """This process's device (``auto``: CUDA when there is one); under torchrun with
    ``WORLD_SIZE > 1`` also join the process group (once per process)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ReadtalkError(f"train.device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ReadtalkError("train.device=cuda, but torch sees no CUDA device")
    dev = torch.device("cpu")
    if device == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = dev.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", device_id=dev if cuda else None)
        atexit.register(_teardown)
    return dev


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision="bf16"`` (weights and optimiser stay float32)."""
    if precision not in ("fp32", "bf16"):
        raise ReadtalkError(f"train.precision must be fp32 or bf16, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ------------------------------------------------------------------------------------- batches


def share(batch_size: int) -> slice:
    """This rank's rows of a global batch of ``batch_size`` (all of them in one process)."""
    n, r = world_size(), rank()
    if batch_size % n:
        raise ReadtalkError(
            f"train.batch_size={batch_size} must be a multiple of the {n} processes"
        )
    k = batch_size // n
    return slice(r * k, (r + 1) * k)


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scalars averaged over the ranks (for logging, and for global loss normalisers)."""
    if world_size() == 1:
        return values
    flat = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    dist.all_reduce(flat)
    flat /= world_size()
    return dict(zip(values, flat.unbind(), strict=True))


# ----------------------------------------------------------------------------- parallelisation


class TrainStep(nn.Module):
    """A model with the loss of one training step as its forward: ``step(rng) -> losses``.

    DDP arms its gradient all-reduce in ``forward``; making the whole step the forward it sees
    lets a loss call any method of the model (``encode_dist``, ``decode``), not only its own
    ``forward``. It has no parameters of its own: its state is the model's."""

    def __init__(
        self, model: nn.Module, loss_fn: Callable[[np.random.Generator], dict[str, torch.Tensor]]
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return self.loss_fn(rng)


def parallel_mode(model: nn.Module, parallel: str) -> str:
    """``none`` (one process), ``ddp`` or ``fsdp`` for ``train.parallel`` (auto|ddp|fsdp)."""
    if parallel not in ("auto", "ddp", "fsdp"):
        raise ReadtalkError(f"train.parallel must be auto, ddp or fsdp, got {parallel!r}")
    if world_size() == 1:
        return "none"
    blocks = getattr(model, "blocks", None)
    if parallel == "fsdp" and not isinstance(blocks, nn.ModuleList):
        raise ReadtalkError(
            f"train.parallel=fsdp shards transformer blocks; {type(model).__name__} has none "
            "(use ddp)"
        )
    if parallel == "auto":
        big = sum(p.numel() for p in model.parameters()) >= FSDP_AUTO_PARAMS
        return "fsdp" if big and isinstance(blocks, nn.ModuleList) else "ddp"
    return parallel


def parallelize(module: nn.Module, tc: OptimConfig) -> nn.Module:
    """Apply data parallelism to ``module`` from outside it, as ``tc.parallel`` asks; returns
    what to call.

    ``module`` is a ``TrainStep`` (a model and its loss) or a bare model (an EMA copy, which
    is sharded like the model under FSDP2 and left whole, updated alike on every rank, under
    DDP). In one process nothing is wrapped. DDP wraps the module. FSDP2 shards the model in
    place, each of its ``blocks`` and then the model as the root (bf16 parameters with float32
    gradient reduction with ``train.precision=bf16`` on CUDA); build the optimiser after
    this call. ``train.checkpointing`` recomputes each block in the backward pass (activation
    checkpointing: the model's ``gradient_checkpointing`` switch).
    """
    model = module.model if isinstance(module, TrainStep) else module
    if tc.checkpointing:
        if not hasattr(model, "gradient_checkpointing"):
            raise ReadtalkError(
                f"train.checkpointing applies to transformer blocks; {type(model).__name__} "
                "has none"
            )
        model.gradient_checkpointing = True
    mode = parallel_mode(model, tc.parallel)
    if mode == "none":
        return module
    device = next(model.parameters()).device
    if mode == "ddp":
        if not any(p.requires_grad for p in module.parameters()):
            return module  # an EMA copy: every rank applies the same updates to its own
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size(),))
    mp = MixedPrecisionPolicy()
    if tc.precision == "bf16" and device.type == "cuda":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    # the DiT returns a permuted view of its output; no loss modifies it in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    return module


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` is sharded by FSDP2 (its forward then needs every rank)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


# --------------------------------------------------------------------------------------- state


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def state_dict(
    model: nn.Module, opt: torch.optim.Optimizer | None = None
) -> tuple[dict, dict | None]:
    """Full (unsharded, unwrapped) model and optimiser state on the CPU, complete on rank 0
    (empty elsewhere). Every rank must call it: under FSDP2 it gathers the shards."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    if not is_main() and not is_sharded(model):
        return {}, ({} if opt is not None else None)  # replicas: rank 0's copy is the state
    opts = _options(cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, opt, options=opts) if opt is not None else None
    return msd, osd


def load_state_dict(
    model: nn.Module,
    msd: dict,
    opt: torch.optim.Optimizer | None = None,
    osd: dict | None = None,
) -> None:
    """Load full states written by ``state_dict`` (or by ``module.state_dict()``) into the
    (possibly wrapped or sharded) model and optimiser; every rank calls it with the full
    dicts and keeps its own part."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    set_model_state_dict(model, msd, options=_options())
    if opt is None or osd is None:
        return
    groups = osd.get("param_groups") or [{}]
    if groups[0].get("params") and isinstance(groups[0]["params"][0], int):
        if is_sharded(model):  # torch.optim's own format (checkpoints from before dist.py)
            raise ReadtalkError("this checkpoint's optimiser state cannot be loaded under FSDP")
        opt.load_state_dict(osd)
        return
    set_optimizer_state_dict(model, opt, osd, options=_options())
