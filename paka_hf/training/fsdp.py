"""FSDP2 for a PaKA run: when a run asks for it, how it is set up, and its sharded checkpoints.

**Asking for it.** A run asks for FSDP through Accelerate, as for any ``transformers`` training:
``accelerate launch --config_file configs/accelerate/fsdp_8gpu.yaml`` (``distributed_type: FSDP``,
``fsdp_version: 2``) or ``accelerate launch --use_fsdp --fsdp_version 2``, both of which set
``ACCELERATE_USE_FSDP=true`` and the ``FSDP_*`` settings in every process's environment; or with
``PaKAConfig(fsdp=...)`` (``TrainingArguments.fsdp``). Accelerate turns FSDP on only on accelerators; on a CPU it
would train with whole parameters and say nothing. :func:`fsdp_plan` reads the request the same way on every
machine (Accelerate's ``FullyShardedDataParallelPlugin``, which parses the environment), and either returns the
:class:`FSDPPlan` the trainer shards with (:func:`paka_hf.modeling.sharding.shard_paka_model`, on a mesh over every
process on this device type: CUDA, or CPU with gloo) or stops at start-up with one line saying why. It is never
ignored.

**What is honoured, what is refused.** ``fsdp_version`` must be 2. ``fsdp_reshard_after_forward`` is honoured for the
student (the teacher always reshards); ``fsdp_activation_checkpointing`` turns on the backbone's activation
checkpointing (as ``activation_checkpointing: true``); ``bf16: true`` gives bf16 parameters with fp32 gradient
reduction. Refused, each with its reason: parameter offload to the CPU, ``FULL_STATE_DICT`` checkpoints (a PaKA
checkpoint under FSDP is always sharded, the export always whole), fp16 (use bf16), ``torch_compile``. The user's
wrap policy is not needed: PaKA shards every transformer block of its backbone families and says so in the log.

**Checkpoints.** The model and the optimizer are written with ``torch.distributed.checkpoint`` into
:data:`~paka_hf.utils.files.MODEL_SHARDS_DIR` and :data:`~paka_hf.utils.files.OPTIMIZER_SHARDS_DIR` of the
``checkpoint-N`` folder: every process writes its own shard file, process zero the ``.metadata`` index. The
completion marker is written after all of them (``PaKATrainer._save_checkpoint``), so a run killed while saving
leaves a folder no resume picks. A resume needs the same number of processes, as for DDP: each process's data
stream resumes from its own position (``paka_stream_rank{r}.json``); the marker's ``world_size`` and ``sharding``
are checked before anything loads (:func:`paka_hf.training.checkpoints.check_checkpoint_layout`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from paka_hf.modeling.sharding import FSDP2, ShardingSettings
from paka_hf.training.config import PaKAConfig
from paka_hf.utils.errors import ConfigError

logger = logging.getLogger(__name__)

#: The environment variable ``accelerate launch`` sets in every process of an FSDP run.
FSDP_ENV = "ACCELERATE_USE_FSDP"


@dataclass(frozen=True)
class FSDPPlan:
    """How a run is sharded.

    Args:
        world_size: processes in the mesh (all of them: one 1-D mesh, FSDP's full sharding).
        device_type: ``"cuda"`` or ``"cpu"``: the mesh's device type (gloo on the CPU).
        settings: the mixed precision and resharding of :func:`paka_hf.modeling.sharding.shard_paka_model`.
        activation_checkpointing: Accelerate's ``fsdp_activation_checkpointing`` asked for it.
    """

    world_size: int
    device_type: str
    settings: ShardingSettings
    activation_checkpointing: bool = False

    def summary(self) -> dict[str, object]:
        """What ``training_summary.json`` records under ``parallelism``.

        Returns:
            ``{"strategy": "FSDP2", "mesh": [W], "device_type": ..., "mixed_precision": ...}``.
        """
        return {
            "strategy": FSDP2,
            "mesh": [self.world_size],
            "device_type": self.device_type,
            "param_dtype": str(self.settings.param_dtype or torch.float32).removeprefix("torch."),
            "reduce_dtype": str(self.settings.reduce_dtype or torch.float32).removeprefix("torch."),
            "reshard_after_forward": self.settings.reshard_after_forward,
        }

    def describe(self) -> str:
        """The start-up log line.

        Returns:
            E.g. ``"FSDP2 over a mesh of 8 cuda processes: ..."``.
        """
        return (
            f"{FSDP2} over a mesh of {self.world_size} {self.device_type} process(es): each transformer block and "
            f"the root of the student and of the teacher sharded; {self.settings.describe()}"
        )

    def device_mesh(self):
        """The 1-D mesh over every process, on this plan's device type.

        Returns:
            A ``torch.distributed.device_mesh.DeviceMesh``.
        """
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(self.device_type, (self.world_size,))


def fsdp_requested(args: PaKAConfig, accelerator) -> bool:
    """Whether this run asked for FSDP, by any of the routes of the module docstring.

    Args:
        args: the run's settings (``fsdp``).
        accelerator: the trainer's ``Accelerator`` (its state's ``fsdp_plugin``).

    Returns:
        True when FSDP was asked for.
    """
    if getattr(accelerator.state, "fsdp_plugin", None) is not None:
        return True
    if os.environ.get(FSDP_ENV, "false").lower() in ("1", "true", "yes"):
        return True
    return bool(getattr(args, "fsdp", None))


def fsdp_plan(args: PaKAConfig, accelerator) -> FSDPPlan | None:
    """The :class:`FSDPPlan` of a run that asked for FSDP; ``None`` for one that did not.

    Args:
        args: the run's settings.
        accelerator: the trainer's ``Accelerator``.

    Returns:
        The plan, or ``None``.

    Raises:
        ConfigError: FSDP is asked for with a setting PaKA does not honour (module docstring), or in a run that is
            not distributed.
    """
    if not fsdp_requested(args, accelerator):
        return None
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None:
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(**(getattr(args, "fsdp_plugin_args", None) or {}))
    version = int(getattr(plugin, "fsdp_version", 1) or 1)
    if version != 2:
        raise ConfigError(
            f"FSDP version {version} is not supported: PaKA shards with FSDP2; set fsdp_version: 2 in the Accelerate "
            "config (or --fsdp_version 2), as configs/accelerate/fsdp_8gpu.yaml does"
        )
    from torch.distributed.fsdp import CPUOffloadPolicy

    if isinstance(getattr(plugin, "cpu_offload", None), CPUOffloadPolicy):
        raise ConfigError(
            "fsdp_offload_params is not supported by PaKA's FSDP2 training: remove it; shard over more GPUs, or "
            "train LoRA adapters (use_lora: true), to fit a larger backbone"
        )
    if "FULL_STATE_DICT" in str(getattr(plugin, "state_dict_type", "")):
        raise ConfigError(
            "fsdp_state_dict_type FULL_STATE_DICT is not supported: PaKA's checkpoints under FSDP are sharded (every "
            "process writes its shard) and its export is always the whole model; set SHARDED_STATE_DICT or remove it"
        )
    if args.fp16:
        raise ConfigError(
            "fp16 under FSDP is not supported: set bf16: true (bf16 parameters, fp32 gradient reduction)"
        )
    if args.torch_compile:
        raise ConfigError(
            "torch_compile under FSDP is not supported by PaKA yet (its compiled regions are not checked with sharded "
            "blocks): set torch_compile: false"
        )
    if args.world_size > 1 and not torch.distributed.is_initialized():
        raise ConfigError("FSDP needs a distributed launch: start the run with accelerate launch or torchrun")
    return FSDPPlan(
        world_size=args.world_size,
        device_type=args.device.type,
        settings=ShardingSettings(
            param_dtype=torch.bfloat16 if args.bf16 else None,
            reduce_dtype=torch.float32,
            reshard_after_forward=bool(getattr(plugin, "reshard_after_forward", True)),
        ),
        activation_checkpointing=bool(getattr(plugin, "activation_checkpointing", False)),
    )


def ensure_process_group(device_type: str) -> None:
    """Start a one-process group when a single process asked for FSDP (a mesh needs a process group).

    Args:
        device_type: ``"cuda"`` (NCCL) or ``"cpu"`` (gloo).
    """
    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29400")
    backend = "nccl" if device_type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, rank=0, world_size=1)


# ---------------------------------------------------------------------------------------------
# sharded checkpoints
# ---------------------------------------------------------------------------------------------


def _inner_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's ``AcceleratedOptimizer`` (the one whose groups hold the parameters)."""
    return getattr(optimizer, "optimizer", optimizer)


def save_sharded_model(model: nn.Module, folder: Path) -> None:
    """Every process writes its shards of ``model``'s state (student, teacher, heads, loss buffers) to
    ``folder`` (``torch.distributed.checkpoint``). A collective call.

    Args:
        model: the sharded model.
        folder: the checkpoint's :data:`~paka_hf.utils.files.MODEL_SHARDS_DIR`.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    dcp.save(get_model_state_dict(model), checkpoint_id=str(folder))


def load_sharded_model(model: nn.Module, folder: Path) -> None:
    """Load the shards :func:`save_sharded_model` wrote into ``model``, strictly: a tensor missing from the checkpoint
    or a tensor of the checkpoint that the model lacks is an error (the same rule as a DDP checkpoint's load).

    Args:
        model: the sharded model.
        folder: the checkpoint's :data:`~paka_hf.utils.files.MODEL_SHARDS_DIR`.

    Raises:
        ConfigError: the checkpoint holds other tensors than the model (another architecture or head settings).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = get_model_state_dict(model)
    stored = set(dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    if stored != set(state):
        missing, unexpected = sorted(set(state) - stored)[:5], sorted(stored - set(state))[:5]
        raise ConfigError(
            f"checkpoint {folder.parent} does not match this model (different architecture or head settings?): "
            f"missing {missing}, unexpected {unexpected}"
        )
    dcp.load(state, checkpoint_id=str(folder))
    set_model_state_dict(model, state)


def save_sharded_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Every process writes its shards of the optimizer's state (AdamW moments of its rows) and the groups'
    settings. A collective call.

    Args:
        model: the sharded model the optimizer steps.
        optimizer: the optimizer (or Accelerate's wrapper of it).
        folder: the checkpoint's :data:`~paka_hf.utils.files.OPTIMIZER_SHARDS_DIR`.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    dcp.save(get_optimizer_state_dict(model, _inner_optimizer(optimizer)), checkpoint_id=str(folder))


def load_sharded_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Load what :func:`save_sharded_optimizer` wrote into ``optimizer``.

    Args:
        model: the sharded model the optimizer steps.
        optimizer: the optimizer (or Accelerate's wrapper of it).
        folder: the checkpoint's :data:`~paka_hf.utils.files.OPTIMIZER_SHARDS_DIR`.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    inner = _inner_optimizer(optimizer)
    state = get_optimizer_state_dict(model, inner)
    dcp.load(state, checkpoint_id=str(folder))
    set_optimizer_state_dict(model, inner, state)
