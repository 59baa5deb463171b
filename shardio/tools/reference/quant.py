"""Head-wise 8-bit quantization of saved activations, with running scale estimates.

Each group (one per attention head, or one per block of channels) has a running minimum
and range, updated by exponential moving average during training (as in Mesa), never by
gradient.  Codes are rounded stochastically so that dequantized values are unbiased.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from shardio.core.config import positive_int
from shardio.core.errors import InvalidOptionError

__all__ = ["Layout", "Packed", "HeadwiseQuantizer", "LEVELS"]

Layout = Literal["heads", "channels"]
LEVELS = 255  # uint8 codes 0..255
_MIN_RANGE = 1e-8


@dataclass(frozen=True)
class Packed:
    """An activation kept for backward: uint8 codes plus a step and minimum per group."""

    codes: Tensor
    step: Tensor
    minimum: Tensor


class HeadwiseQuantizer(nn.Module):
    """Quantize tensors to 8 bits with one (minimum, range) estimate per group.

    ``layout="heads"``: tensors shaped ``(B, H, ...)``, one group per head (dim 1).
    ``layout="channels"``: tensors shaped ``(..., C)``, the last dim split into ``groups``
    equal blocks of channels.
    """

    running_min: Tensor
    running_range: Tensor
    initialized: Tensor

    def __init__(
        self,
        groups: int,
        layout: Layout,
        momentum: float = 0.9,
        stochastic: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        positive_int(groups, "groups")
        if layout not in ("heads", "channels"):
            raise InvalidOptionError(
                f"layout should be 'heads' or 'channels', but got layout={layout!r}"
            )
        if not 0.0 <= momentum < 1.0:
            raise InvalidOptionError(f"momentum should be in [0, 1), but got momentum={momentum}")
        self.groups = groups
        self.layout: Layout = layout
        self.momentum = momentum
        self.stochastic = stochastic
        self.seed = seed
        self.register_buffer("running_min", torch.zeros(groups))
        self.register_buffer("running_range", torch.ones(groups))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._offsets = random.Random(seed)
        # Mirrors `initialized` on the host, so a CUDA step does not sync to read it.
        self._ready = False

    def extra_repr(self) -> str:
        return f"groups={self.groups}, layout={self.layout!r}, momentum={self.momentum}"

    # -- public -----------------------------------------------------------------
    @torch.no_grad()
    def pack(self, x: Tensor) -> Packed:
        """Update the running estimates (in training) and return ``x`` as 8-bit codes."""
        rows = self._rows(x)
        if self.training or not self._is_ready():
            self._update(rows)
        step = (self.running_range.clamp(min=_MIN_RANGE) / LEVELS).to(x.dtype)
        minimum = self.running_min.to(x.dtype)
        shape = self._stat_shape(rows)
        # t = (x - min) / step + u, truncated: with u ~ U[0, 1) this is stochastic
        # rounding (u = 0.5 gives round-to-nearest).
        inverse = (1.0 / step).view(shape)
        bias = ((0.0 if self.stochastic else 0.5) - minimum / step).view(shape)
        codes = torch.empty(rows.shape, dtype=torch.uint8, device=x.device)
        for source, target in _chunks(rows, codes):
            scaled = _scratch(source)
            # mul + add_ rather than addcmul: broadcasting addcmul is several times slower.
            torch.mul(source, inverse, out=scaled).add_(bias)
            if self.stochastic:
                self._add_uniform_noise(scaled.view(-1))
            target.copy_(scaled.clamp_(0, LEVELS))  # truncation == floor here
        return Packed(codes.view(x.shape), step, minimum)

    def unpack(self, packed: Packed, dtype: torch.dtype) -> Tensor:
        """The dequantized activation, in ``dtype``."""
        rows = self._rows(packed.codes)
        shape = self._stat_shape(rows)
        step = packed.step.to(dtype).view(shape)
        minimum = packed.minimum.to(dtype).view(shape)
        values = torch.empty(rows.shape, dtype=dtype, device=rows.device)
        for codes, target in _chunks(rows, values):
            target.copy_(codes).mul_(step).add_(minimum)
        return values.view(packed.codes.shape)

    # -- internals --------------------------------------------------------------
    def _rows(self, x: Tensor) -> Tensor:
        """``x`` viewed with the groups on dim 1 and one leading dim to cut into chunks:
        ``(B, H, ...)`` for 'heads', ``(M, G, C // G)`` for 'channels'."""
        if self.layout == "heads":
            if x.dim() < 2 or x.shape[1] != self.groups:
                raise InvalidOptionError(
                    f"a 'heads' quantizer with {self.groups} groups expects a tensor shaped "
                    f"(B, {self.groups}, ...), but got shape {tuple(x.shape)}"
                )
            return x
        channels = x.shape[-1]
        if channels % self.groups:
            raise InvalidOptionError(
                f"a 'channels' quantizer with {self.groups} groups expects a last dimension "
                f"divisible by {self.groups}, but got shape {tuple(x.shape)}"
            )
        return x.reshape(-1, self.groups, channels // self.groups)

    def _is_ready(self) -> bool:
        if not self._ready:
            self._ready = bool(self.initialized)
        return self._ready

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False  # read `initialized` again

    def _stat_shape(self, rows: Tensor) -> list[int]:
        return [1, self.groups] + [1] * (rows.dim() - 2)

    def _update(self, rows: Tensor) -> None:
        dims = (0, *range(2, rows.dim()))
        low = rows.amin(dim=dims).float()
        spread = rows.amax(dim=dims).float() - low
        if not self._is_ready():
            self.running_min.copy_(low)
            self.running_range.copy_(spread)
            self.initialized.fill_(True)
            self._ready = True
            return
        self.running_min.lerp_(low, 1.0 - self.momentum)
        self.running_range.lerp_(spread, 1.0 - self.momentum)

    def _add_uniform_noise(self, flat: Tensor) -> None:
        """Add U[0, 1) noise to ``flat`` in place.

        NOTE: drawing a fresh uniform per element cost more than the rest of the
        quantization on the CPU, so the noise is read from a fixed table of uniforms at
        a random offset per chunk.  Each value is uniform, so rounding stays unbiased;
        only elements a table apart within one chunk could share noise, and none do.
        """
        table = _noise_table(flat.device, flat.dtype)
        for start in range(0, flat.numel(), _NOISE_CHUNK):
            chunk = flat[start : start + _NOISE_CHUNK]
            offset = self._offsets.randrange(_NOISE_TABLE - _NOISE_CHUNK)
            chunk.add_(table[offset : offset + chunk.numel()])


def _chunks(source: Tensor, target: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    """Matching slices of ``source`` and ``target`` along dim 0.

    NOTE: on the CPU the passes of (de)quantization run chunk by chunk through a small
    scratch buffer that stays in cache; one fresh full-size fp32 temporary per call cost
    more in page faults than the arithmetic.  On CUDA the whole tensor is one chunk.
    """
    if source.device.type == "cuda" or source.numel() <= _CHUNK:
        yield source, target
        return
    per_row = max(1, source.numel() // max(1, source.shape[0]))
    step = max(1, _CHUNK // per_row)
    for start in range(0, source.shape[0], step):
        yield source[start : start + step], target[start : start + step]


def _scratch(like: Tensor) -> Tensor:
    """A float buffer shaped like ``like``: reused per thread on the CPU, fresh on CUDA."""
    if like.device.type == "cuda":
        return torch.empty(like.shape, dtype=like.dtype, device=like.device)
    buffer: Tensor | None = getattr(_local, "scratch", None)
    if buffer is None or buffer.numel() < like.numel() or buffer.dtype != like.dtype:
        buffer = torch.empty(like.numel(), dtype=like.dtype)
        _local.scratch = buffer
    return buffer[: like.numel()].view(like.shape)


_CHUNK = 1 << 19
_local = threading.local()
_NOISE_TABLE = 1 << 22
_NOISE_CHUNK = 1 << 20
_noise_tables: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def _noise_table(device: torch.device, dtype: torch.dtype) -> Tensor:
    """A fixed table of U[0, 1) values per device and dtype, made on first use."""
    key = (device, dtype)
    table = _noise_tables.get(key)
    if table is None:
        # Its own generator: making the table never shifts the data order or init.
        generator = torch.Generator(device=device)
        generator.manual_seed(_NOISE_SEED)
        table = torch.rand(_NOISE_TABLE, generator=generator, device=device).to(dtype)
        _noise_tables[key] = table
    return table


_NOISE_SEED = 0x5EED
