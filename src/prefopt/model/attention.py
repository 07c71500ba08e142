"""Which attention kernel a model runs (`model.attention`), and the sparse masks of packed rows.

A packed row (`prefopt.data.packing`: shared prompts, several sequences per row) lets each
token attend only inside its own sequence, and a rejected completion never sees the chosen
one. `sdpa` and `eager` take that as a dense [rows, 1, T, T] mask, whose cost grows with the
square of the row. `flex` describes it as a FlexAttention `BlockMask` built from each token's
group, branch and position (`block_mask`): blocks of 128×128 that nothing attends to are
skipped, so a row may hold many pairs. `flash_varlen` runs plain padding-free rows through the
model's flash-attention varlen path, given the sequences' boundaries over all rows
(`packed_attention_kwargs`: transformers reads them from position ids only for one row).

Models load flex as `prefopt_flex` (`FLEX`), an attention function registered with
transformers: a `BlockMask` goes to FlexAttention (the compiled kernel, on a GPU), anything
else to transformers' SDPA function with its mask, so unpacked batches and generation run as
under `sdpa`. FlexAttention has no backward pass on CPU (torch 2.13 refuses one), so on CPU a
`BlockMask` is applied by `_segment_attention` instead, from the layout the mask was built from:
one SDPA call per sequence of the row, so the work grows with the sum of the squared sequence
lengths rather than T². docs/performance.md has figures. No GPU has run the flex and
flash_varlen paths yet, so `auto` keeps `sdpa` everywhere until they are measured.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prefopt.data.packing import CHOSEN, REJECTED, allowed_mask
from prefopt.errors import PrefoptError

log = logging.getLogger("prefopt.attention")

ATTENTION = ("auto", "sdpa", "flex", "flash_varlen", "eager")
FLEX = "prefopt_flex"
"""The attention implementation name a `flex` model is loaded with (see the module docstring)."""
FLASH = "flash_attention_2"
SPARSE_IMPLEMENTATIONS = (FLEX, FLASH)
"""Implementations whose packed rows carry no dense mask (`packed_attention_mask`)."""


def flex_available() -> bool:
    """Whether FlexAttention can run here: torch's `flex_attention` and transformers' attention
    registry. The one place that decides it (`auto` falls back to `sdpa` when False)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
        from transformers import AttentionInterface, AttentionMaskInterface  # noqa: F401
    except ImportError:
        return False
    return True


def flash_varlen_available() -> bool:
    """A CUDA device and the `flash-attn` package."""
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


@functools.cache
def resolve_attention(requested: str) -> str:
    """`model.attention` as the kernel this machine runs: sdpa, flex, flash_varlen or eager.
    `auto` picks sdpa, in one info line: flex and flash_varlen stay opt-in until
    `benchmarks/device/gpu_check.sh` has measured them against sdpa on a GPU (a kernel that
    fails only in its backward would pass the packing probe, which runs forwards). An explicit
    choice this machine cannot run falls back with one info line. Cached: the policy and the
    reference resolve once."""
    mode = str(requested).lower()
    if mode not in ATTENTION:
        raise PrefoptError(f"model.attention={requested!r}: choose one of {', '.join(ATTENTION)}")
    if mode == "auto":
        where = "a GPU" if torch.cuda.is_available() else "CPU"
        log.info(
            "model.attention=auto: sdpa on %s (flex and flash_varlen are opt-in: "
            "model.attention=flex)",
            where,
        )
        return "sdpa"
    if mode == "flex" and not flex_available():
        log.info("model.attention=flex: FlexAttention is not available here; using sdpa")
        return "sdpa"
    if mode == "flash_varlen" and not flash_varlen_available():
        fallback = "flex" if flex_available() else "sdpa"
        log.info("model.attention=flash_varlen: needs a GPU and flash-attn; using %s", fallback)
        return fallback
    return mode


def implementation(attention: str) -> str:
    """The `attn_implementation` a model loads with for a resolved `model.attention`."""
    if attention == "flex":
        register_flex()
        return FLEX
    return {"flash_varlen": FLASH}.get(attention, attention)


def model_implementation(model: nn.Module) -> str | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "_attn_implementation", None)


@functools.cache
def register_flex() -> None:
    """Register `prefopt_flex` with transformers: `_flex_or_sdpa` as its attention function,
    SDPA's mask builder for the masks transformers makes itself (unpacked rows)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(FLEX, _flex_or_sdpa)
    AttentionMaskInterface.register(FLEX, sdpa_mask)


def _flex_or_sdpa(module, query, key, value, attention_mask, **kwargs):
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.integrations.flex_attention import flex_attention_forward
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not isinstance(attention_mask, BlockMask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if query.device.type == "cuda":  # the compiled kernel; elsewhere the per-sequence path
        return flex_attention_forward(module, query, key, value, attention_mask, **kwargs)
    dropout = kwargs.get("dropout", 0.0) if module.training else 0.0
    segments = attention_mask.prefopt_segments
    out = _segment_attention(query, key, value, segments, kwargs.get("scaling"), dropout)
    return out.transpose(1, 2).contiguous(), None


@dataclass
class Segments:
    """The sequences of packed rows, for attention one sequence at a time (`_segment_attention`):
    a group's tokens are contiguous in its row and see only each other."""

    groups: Tensor
    branches: Tensor
    positions: Tensor
    window: int | None

    @functools.cached_property
    def rows(self) -> list[list[tuple[int, Tensor | None, bool]]]:
        """Per row, each run's (length, mask, padding). Worked out once per batch, not per layer:
        every layer of the policy and of the reference reads the same plan, so it is built as
        normal tensors even when the reference, under inference_mode, reads it first."""
        with torch.inference_mode(False), torch.no_grad():
            return self._plan()

    def _plan(self) -> list[list[tuple[int, Tensor | None, bool]]]:
        plan = []
        for groups, branches, positions in zip(self.groups, self.branches, self.positions):
            starts = _group_starts(groups)
            ends = [*starts[1:], len(groups)]
            runs = []
            for start, end in zip(starts, ends):
                mask = _group_mask(branches[start:end], positions[start:end], self.window)
                runs.append((end - start, mask, bool(groups[start] < 0)))
            plan.append(runs)
        return plan


def _segment_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    segments: Segments,
    scale: float | None,
    dropout: float,
) -> Tensor:
    """Attention of packed rows on CPU, one SDPA call per sequence, so the work and the masks
    grow with the sum of the squared sequence lengths, not T². A plain sequence without a window
    runs `is_causal` with no mask at all; a shared pair gets its own [L, L] mask. `unbind` and
    `split` views keep the backward to one concatenation per tensor (slicing would allocate a
    full-size gradient per slice)."""
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for plan, *states in zip(segments.rows, query.unbind(0), key.unbind(0), value.unbind(0)):
        lengths = [length for length, _, _ in plan]
        pieces = []
        for (_, mask, padding), q, k, v in zip(plan, *(s.split(lengths, 1) for s in states)):
            if padding:  # its outputs are never scored
                pieces.append(torch.zeros_like(q))
                continue
            pieces.append(
                nn.functional.scaled_dot_product_attention(
                    q[None], k[None], v[None], attn_mask=mask, dropout_p=dropout,
                    is_causal=mask is None, scale=scale, enable_gqa=gqa,
                )[0]
            )  # fmt: skip
        rows.append(torch.cat(pieces, 1))
    return torch.stack(rows)


def _group_starts(groups: Tensor) -> list[int]:
    """Where each run of one group begins; every group must be one run (as packing lays them)."""
    starts = [0, *(torch.nonzero(groups[1:] != groups[:-1]).flatten() + 1).tolist()]
    ids = groups[starts]
    if len(set(ids[ids >= 0].tolist())) != int((ids >= 0).sum()):
        raise ValueError("a packed row holds a group in more than one run of tokens")
    return starts


def _group_mask(branches: Tensor, positions: Tensor, window: int | None) -> Tensor | None:
    """[1, 1, L, L] of one group (packing's own rule, within the window); None where causal
    alone says it (SDPA's `is_causal`, no mask built)."""
    shared = bool((branches == REJECTED).any())
    if not shared and (window is None or int(positions.max() - positions.min()) < window):
        return None
    allowed = allowed_mask(torch.zeros_like(branches)[None], branches[None])
    if window is not None:
        allowed = allowed & (positions[:, None] - positions[None, :] < window)
    return allowed


# --- the masks of packed rows ---------------------------------------------------------------


def packed_attention_mask(model: nn.Module, layout: dict[str, Tensor]):
    """The attention mask a sparse model takes for a packed layout (groups, branches, position
    ids; no dense mask): a `BlockMask` (or one per layer type) for flex, None for flash varlen
    (the position ids mark where each sequence starts). None of them is [T, T] dense."""
    name = model_implementation(model)
    if name == FLASH:
        if (layout["branches"] == REJECTED).any():
            raise ValueError("flash varlen rows cannot hold shared prompts")
        return None
    if name != FLEX:
        raise ValueError(f"attention implementation {name!r} takes a dense 4-D mask")
    window, layer_types = sliding_window(model)
    alternating = bool(window and layer_types and "full_attention" in layer_types)
    tensors = (layout["groups"], layout["branches"], layout["position_ids"])
    cached = _last_masks.get("key")
    if cached and all(a is b for a, b in zip(cached[0], tensors)) and cached[1] == window:
        masks = _last_masks["masks"]
    else:
        # Built as normal tensors even when the reference asks first, under inference_mode:
        # the policy reuses these masks for the same batch, and FlexAttention saves them for
        # its backward, which refuses inference tensors ("Inference tensors cannot be saved
        # for backward").
        with torch.inference_mode(False), torch.no_grad():
            masks = {
                w: block_mask(*tensors, window=w) for w in {window, None if alternating else window}
            }
        _last_masks.update(key=(tensors, window), masks=masks)
    if alternating:
        # Models whose layers alternate (Qwen2 with max_window_layers) take one mask per type.
        return {"full_attention": masks[None], "sliding_attention": masks[window]}
    return masks[window]


def packed_attention_kwargs(model: nn.Module, layout: dict[str, Tensor]) -> dict:
    """The keyword arguments a sparse model takes besides its mask for a packed layout: for
    flash varlen, the sequences' boundaries over all rows laid end to end (`cu_seq_lens_q/k`,
    `max_length_q/k`, transformers' `FlashAttentionKwargs`); none for the others.

    Why: transformers (5.x) reads boundaries from position ids only for a batch of ONE row
    (`_is_packed_sequence`); with several rows it runs plain causal flash over each whole row,
    and the sequences packed in a row attend to each other. Given these, its varlen path
    flattens the rows (batch × T tokens, one after the other) and attends within each sequence:
    every row starts a sequence (position 0), and so does every position 0 inside a row."""
    if model_implementation(model) != FLASH:
        return {}
    flat = layout["position_ids"].reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    ends = torch.tensor([flat.numel()], device=flat.device)
    cu_seq_lens = torch.cat([starts, ends]).to(torch.int32)
    longest = int(cu_seq_lens.diff().max())
    return {
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": longest,
        "max_length_k": longest,
    }


_last_masks: dict = {}
"""The masks of the last layout: the policy and the reference score the same packed batch."""


def sliding_window(model: nn.Module) -> tuple[int | None, list[str] | None]:
    """The model's sliding attention window (None without one) and its layer types."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None, None
    layer_types = getattr(config, "layer_types", None)
    if layer_types and "sliding_attention" not in layer_types:
        return None, None
    return int(window), layer_types


BLOCK = 128
"""FlexAttention's block size: the mask says, per 128×128 block, none, some or all."""


def block_mask(groups: Tensor, branches: Tensor, positions: Tensor, window: int | None = None):
    """The `BlockMask` of packed rows: query i sees key j of its own group with j <= i, unless
    i is a rejected-completion token and j a chosen-completion one; with `window`, only keys
    less than `window` positions back (as the model's own sliding-window mask).

    Built one block of queries at a time ([rows, 128, T] booleans, never [T, T]) without
    `torch.compile`: `create_block_mask(_compile=True)` takes ~40 s to compile on CPU, and
    without compiling it evaluates the whole [rows, T, T] mask at once."""
    from torch.nn.attention.flex_attention import BlockMask

    rows, width = groups.shape
    segments = Segments(groups, branches, positions, window)
    # Lengths are padded to whole blocks (-2: a group of its own) so mask_mod never reads past.
    n_blocks = -(-width // BLOCK)
    pad = (0, n_blocks * BLOCK - width)
    groups = nn.functional.pad(groups, pad, value=-2)
    branches = nn.functional.pad(branches, pad, value=0)
    positions = nn.functional.pad(positions, pad, value=0)

    def mask_mod(b, h, q, kv):
        allowed = (groups[b, q] == groups[b, kv]) & (q >= kv)
        allowed = allowed & ~((branches[b, q] == REJECTED) & (branches[b, kv] == CHOSEN))
        if window is not None:
            allowed = allowed & (positions[b, q] - positions[b, kv] < window)
        return allowed

    device = groups.device
    batch = torch.arange(rows, device=device)[:, None, None]
    keys = torch.arange(n_blocks * BLOCK, device=device)[None, None, :]
    some = torch.zeros(rows, n_blocks, n_blocks, dtype=torch.bool, device=device)
    every = torch.zeros_like(some)
    for qb in range(n_blocks):
        queries = torch.arange(qb * BLOCK, (qb + 1) * BLOCK, device=device)[None, :, None]
        tile = mask_mod(batch, 0, queries, keys).view(rows, BLOCK, n_blocks, BLOCK)
        some[:, qb] = tile.any(3).any(1)
        every[:, qb] = tile.all(3).all(1)
    partial = some & ~every

    def listed(flags: Tensor) -> tuple[Tensor, Tensor]:
        # Listed blocks first (a stable sort keeps them in order); counts say how many.
        order = (~flags).to(torch.int8).argsort(dim=-1, stable=True).to(torch.int32)
        return flags.sum(-1, dtype=torch.int32)[:, None], order[:, None]

    mask = BlockMask.from_kv_blocks(
        *listed(partial),
        *listed(every),
        BLOCK_SIZE=BLOCK,
        mask_mod=mask_mod,
        seq_lengths=(width, width),
    )
    # The sequences themselves, for CPU, where FlexAttention has no backward.
    mask.prefopt_segments = segments
    return mask
