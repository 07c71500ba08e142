"""Whether a model can score packed pairs (`prefopt.data.packing`), decided once per model.

Packing needs a model that takes `position_ids` and a custom 4-D attention mask. Transformers
passes a 4-D mask to the attention function as it is: SDPA reads a boolean mask (True =
attend), eager attention adds the mask to its scores (0 or the dtype's minimum). Other
implementations (flash attention, flex attention) and models outside transformers cannot take
one, and `PairPacking` finds that out with a probe before the first batch it packs.
"""

from __future__ import annotations

import logging
import weakref

import torch
from torch import Tensor, nn

from prefopt.data.collate import pad_sequences
from prefopt.data.packing import PACKED, layout_pairs, packed_part, with_mask
from prefopt.errors import PrefoptError
from prefopt.losses.base import CompletionLogps
from prefopt.model.attention import FLASH, SPARSE_IMPLEMENTATIONS, model_implementation
from prefopt.model.logprobs import UnsupportedModel, completion_logps

log = logging.getLogger("prefopt.packing")

PREFIX_SHARING = ("auto", "true", "false")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# --- deciding, once per model, whether to pack ---------------------------------------------

PROBE_TOLERANCE = 1e-5
"""Allowed |packed - standard| of a sequence's summed log-prob in the probe, in fp32. In half
precision, whose attention kernels round differently by layout, 2e-2 per scored token (a model
that ignores the mask or the position ids is off by far more on real weights)."""


def prefix_sharing_mode(value) -> str:
    """`model.prefix_sharing` as auto, true or false (Hydra turns `true` into a bool, and a
    string field into "True")."""
    mode = str(value).lower()
    if mode not in PREFIX_SHARING:
        raise PrefoptError(
            f"model.prefix_sharing={value!r}: choose one of {', '.join(PREFIX_SHARING)}"
        )
    return mode


class PairPacking:
    """How pairs are scored: packed (`prefix_sharing`, `padding_free`) where the model can take
    it, else as separate padded sequences. The first batch a model scores runs a probe (two
    tiny pairs scored both ways); the verdict is kept per model, so one `PairPacking` serves the
    policy and the reference."""

    def __init__(
        self,
        prefix_sharing: str = "false",
        padding_free: bool = False,
        row_tokens: int | None = None,
    ):
        self.prefix_sharing = prefix_sharing_mode(prefix_sharing)
        self.padding_free = padding_free
        self.row_tokens = row_tokens
        """`data.packing_row_tokens`: padding-free rows at least this long (None: the longest
        block's length)."""
        self._verdicts: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()
        self._said: set[str] = set()

    @property
    def requested(self) -> bool:
        return self.prefix_sharing != "false" or self.padding_free

    def pack(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The packed layout with its dense mask (sdpa, eager)."""
        return with_mask(self.layout(batch))

    def layout(self, batch: dict[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
        """The packed layout without a mask, as `model` takes it (`shares_prompts`)."""
        shared = self.shares_prompts(model) if model is not None else self.prefix_sharing != "false"
        return layout_pairs(batch, shared, self.padding_free, self.row_tokens)

    def shares_prompts(self, model: nn.Module) -> bool:
        """Whether pairs share their prompt in `model`'s rows: asked for, and not flash varlen,
        whose sequences cannot hide one completion from the other (one info line)."""
        if self.prefix_sharing == "false":
            return False
        if model_implementation(model) == FLASH:
            self._say("flash varlen rows cannot hold shared prompts: pairs are packed unshared")
            return False
        return True

    def _pack_for(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        layout = self.layout(batch, model)
        return layout if sparse_attention(model) else with_mask(layout)

    def logps(
        self, model: nn.Module, batch: dict[str, Tensor], chunk_size: int | None, **extras: bool
    ) -> CompletionLogps:
        """`completion_logps` of a standard paired batch, packed when this model can take it
        (with the layout the batch carries, when `collate_packed_pairs` made it); `extras` are
        its `shared_prefix` and `wpo` flags."""
        if self.requested and self.supported(model, chunk_size):
            layout = packed_part(batch)
            if layout is None:
                batch = self._pack_for(model, batch)
            else:  # a sparse model builds its own mask from the layout's groups and branches
                batch = layout if sparse_attention(model) else with_mask(layout)
        else:
            batch = {k: v for k, v in batch.items() if not k.startswith(PACKED)}
        return completion_logps(model, batch, chunk_size, **extras)

    def supported(self, model: nn.Module, chunk_size: int | None) -> bool:
        if model not in self._verdicts:
            self._verdicts[model] = self._decide(model, chunk_size)
        return self._verdicts[model]

    def _decide(self, model: nn.Module, chunk_size: int | None) -> bool:
        # A sparse mask keeps the model's sliding window (`attention.block_mask`).
        problem = _sequence_mixing_problem(model)
        problem = problem or (None if sparse_attention(model) else _window_problem(model))
        problem = problem or probe(model, lambda batch: self._pack_for(model, batch), chunk_size)
        if problem is None:
            if self.row_tokens and self.padding_free and not sparse_attention(model):
                # Warned, not capped: the user asked for these rows, and on short ones the
                # dense mask is cheap; the warning names the fix.
                log.warning(
                    "data.packing_row_tokens=%d with a dense attention mask (%s): each row "
                    "costs T² in memory and time; model.attention=flex keeps it sparse",
                    self.row_tokens,
                    model_implementation(model),
                )
            return True
        name = type(_unwrap(model)).__name__
        if self.prefix_sharing == "true":
            raise PrefoptError(
                f"model.prefix_sharing=true: {name} {problem}; set model.prefix_sharing=auto "
                "(or false) to score pairs as separate sequences"
            )
        log.info("prefix sharing: %s %s; scoring pairs as separate sequences", name, problem)
        return False

    def _say(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            log.info(line)


def sparse_attention(model: nn.Module) -> bool:
    """Whether `model` takes packed rows without a dense mask (flex, flash varlen)."""
    return model_implementation(model) in SPARSE_IMPLEMENTATIONS


def _sequence_mixing_problem(model: nn.Module) -> str | None:
    """A convolution over the sequence (Mamba and the other state-space and short-convolution
    layers of hybrid models: Falcon-H1, Jamba, Bamba, LFM2, Qwen3-Next) carries one
    sequence of a row into the next whatever the attention mask says. On random or small
    weights the leak can sit under the probe's tolerance, so such models are never packed."""
    for module in model.modules():
        if isinstance(module, nn.Conv1d):
            return (
                "has a convolution over the sequence (a state-space layer) that no attention "
                "mask confines"
            )
    return None


def _window_problem(model: nn.Module) -> str | None:
    """A sliding attention window is applied by the model's own mask; a custom 4-D mask
    replaces that mask, so a sequence longer than the window would see past it. The probe's
    short pairs cannot show it: such models are not packed."""
    config = getattr(_unwrap(model), "config", None)
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) is not False:
        return f"has a sliding attention window ({window} tokens) that a 4-D mask would bypass"
    return None


def probe(model: nn.Module, pack, chunk_size: int | None) -> str | None:
    """None when `model` scores packed pairs as it scores them one sequence per row, else why
    not. Runs in eval mode (no dropout), without gradient, and in the weights' own dtype even
    under autocast: the verdict is kept per model, and the first to ask may be inside a
    bf16-mixed step (an online reference) or outside it (the policy, probed at build); a
    verdict that depended on where it was asked first would pack the policy's rows and not
    the reference's, and at step 0 their log-probs would then differ by bf16's rounding."""
    parameter = next(model.parameters())
    batch = {k: v.to(parameter.device) for k, v in _probe_batch(_vocab_size(model)).items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(parameter.device.type, enabled=False):
            expected = completion_logps(model, batch, chunk_size)
            got = completion_logps(model, pack(batch), chunk_size)
    except (UnsupportedModel, TypeError, ValueError, RuntimeError, IndexError):
        return "cannot take a 4-D attention mask"
    finally:
        model.train(was_training)
    tolerance = PROBE_TOLERANCE
    if parameter.dtype in (torch.bfloat16, torch.float16):
        tolerance = 2e-2 * expected.token_counts
    if not ((got.summed - expected.summed).abs() <= tolerance).all():
        return "scores differently with position ids and a 4-D attention mask"
    return None


def _vocab_size(model: nn.Module) -> int:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return getattr(embeddings, "num_embeddings", None) or _unwrap(model).config.vocab_size


def _probe_batch(vocab_size: int) -> dict[str, Tensor]:
    """Two pairs: one whose sides share a prompt, one whose prompts differ in their last token.
    The shared pair's chosen completion is the longer one: a model that ignores the position
    ids then sees the rejected tokens shifted far from the prompt."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(min(3, vocab_size - 1), vocab_size, (27,), generator=generator).tolist()
    shared, other = tokens[:4], tokens[4:7]
    sequences = [
        (shared + tokens[7:15], 4),  # chosen rows: (ids, prompt length)
        (other + tokens[15:17], 3),
        (shared + tokens[17:22], 4),  # rejected rows
        (other[:-1] + tokens[22:27], 3),
    ]
    return pad_sequences(sequences, pad_token_id=0)
