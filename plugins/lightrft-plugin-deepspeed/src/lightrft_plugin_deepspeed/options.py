"""The typed options of ``strategy.name: deepspeed`` (``DeepSpeedStrategy.Config``).

No torch and no deepspeed here: the configuration loader and the unit tests of the
generated DeepSpeed config use this module alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ZERO_STAGES = (1, 2, 3)


@dataclass
class DeepSpeedOptions:
    """Options of ``strategy.name: deepspeed``; ``docs/deepspeed.md`` explains each one."""

    # ------------------------------------------------------------ ZeRO
    zero_stage: int = field(
        default=2,
        metadata={
            "help": "ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also parameters."
        },
    )
    offload_optimizer: bool = field(
        default=False,
        metadata={"help": "Keep optimizer states and the fp32 master weights in CPU memory."},
    )
    offload_param: bool = field(
        default=False,
        metadata={"help": "ZeRO-3 only: keep parameter shards in CPU memory between uses."},
    )
    optimizer: Literal["adamw", "cpu_adam"] = field(
        default="adamw",
        metadata={
            "help": "adamw: torch.optim.AdamW (as the local strategy); cpu_adam: DeepSpeed's "
            "vectorised CPU Adam in AdamW mode (a C++ op compiled on first use)."
        },
    )
    overlap_comm: bool = field(
        default=False,
        metadata={"help": "ZeRO-2/3: overlap gradient reduction with the backward pass."},
    )
    # ------------------------------------------------------------ numerics
    precision: Literal["fp32", "bf16"] = field(
        default="fp32",
        metadata={
            "help": "fp32, or bf16 (bf16 parameters and gradients, fp32 master weights and "
            "optimizer states kept by ZeRO)."
        },
    )
    # ------------------------------------------------------------ processes
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto",
        metadata={"help": "Where to train; auto picks cuda (one device per rank) when available."},
    )
    backend: Literal["auto", "gloo", "nccl"] = field(
        default="auto",
        metadata={"help": "torch.distributed backend; auto: nccl on cuda, gloo on cpu."},
    )
    timeout_s: float = field(
        default=1800.0,
        metadata={
            "help": "Seconds a collective may wait for the other ranks before failing "
            "(a dead or stuck rank makes the others exit instead of hanging)."
        },
    )
    # ------------------------------------------------------------ escape hatches
    config_file: str | None = field(
        default=None,
        metadata={
            "help": "A DeepSpeed JSON config merged over the generated one (its keys win); "
            "see docs/deepspeed.md for the keys it may not set."
        },
    )
    torch_extensions_dir: str | None = field(
        default=None,
        metadata={
            "help": "Cache folder of DeepSpeed's JIT-compiled ops (sets TORCH_EXTENSIONS_DIR); "
            "null keeps the environment's value, else torch's default cache."
        },
    )

    def __post_init__(self) -> None:
        if self.zero_stage not in ZERO_STAGES:
            raise ValueError(f"zero_stage must be 1, 2 or 3, got {self.zero_stage!r}")
        if self.offload_param and self.zero_stage != 3:
            raise ValueError(
                f"offload_param needs zero_stage 3 (parameters are sharded only there), "
                f"got zero_stage {self.zero_stage}"
            )
        if self.optimizer not in ("adamw", "cpu_adam"):
            raise ValueError(f"optimizer must be 'adamw' or 'cpu_adam', got {self.optimizer!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {self.backend!r}")
        if self.backend == "nccl" and self.device == "cpu":
            raise ValueError("backend 'nccl' needs CUDA devices; use backend 'gloo' on cpu")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
