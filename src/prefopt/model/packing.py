"""Score a batch of pairs with fewer tokens through the model: shared prompts, no padding.

Prefix sharing: a pair's chosen and rejected sequences usually start with the same prompt, so
the pair is laid out as ONE sequence `prompt | chosen | rejected`. The rejected completion's
position ids restart after the prompt and its tokens may not attend to the chosen completion,
so every token sees exactly what it sees in its own sequence: the log-probs are unchanged, and
the prompt goes through the model once instead of twice. The prompts of a pair can differ (the
tokenizer merged tokens across the prompt/completion boundary, or truncation cut them apart);
such a pair is laid out as its two sequences one after the other.

Padding-free: the blocks of a batch (shared pairs, or single sequences) go end to end in rows
as long as the longest block, each sequence with its own position ids and a block-diagonal
attention mask, so little padding runs through the model. Without it, each pair takes one row, right padded.

Either needs a model that takes `position_ids` and a custom 4-D attention mask. Transformers
passes a 4-D mask to the attention function as it is: SDPA reads a boolean mask (True =
attend), eager attention adds the mask to its scores (0 or the dtype's minimum). Other
implementations (flash attention, flex attention) and models outside transformers cannot take
one, and `PairPacking` finds that out with a probe before the first batch it packs.

The packed batch names, for each scored token, its row, the position whose hidden state
predicts it, its id and the logical sequence it belongs to (0..2B-1, chosen then rejected as in
`collate_pairs`); `completion_logps` scores that layout like the standard one.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from prefopt.data.collate import pad_sequences
from prefopt.errors import PrefoptError
from prefopt.losses.base import CompletionLogps
from prefopt.model.logprobs import UnsupportedModel, completion_logps

log = logging.getLogger("prefopt.packing")

PREFIX_SHARING = ("auto", "true", "false")

# Branch of a token inside a shared layout: the rejected completion may not see the chosen one.
_COMMON, _CHOSEN, _REJECTED = 0, 1, 2


@dataclass
class _Block:
    """The tokens of one pair (or one sequence) in packed order, before they are put in a row."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    """Tokens attend only within their group (a sequence, or a shared pair)."""
    branches: list[int] = field(default_factory=list)
    scored: list[tuple[int, int, int]] = field(default_factory=list)
    """(offset of the predicting position in the block, label id, logical sequence)."""

    def add(self, ids: list[int], positions: range, group: int, branch: int) -> int:
        """Append tokens; returns the block offset of the first one."""
        start = len(self.ids)
        self.ids += ids
        self.positions += positions
        self.groups += [group] * len(ids)
        self.branches += [branch] * len(ids)
        return start


def pack_pairs(
    batch: dict[str, Tensor], shared_prefix: bool = True, padding_free: bool = False
) -> dict[str, Tensor]:
    """The standard paired batch of `collate_pairs` (right padded, chosen rows first) laid out
    with shared prompts and/or without padding, ready for `completion_logps`; see the module
    docstring."""
    return with_mask(layout_pairs(batch, shared_prefix, padding_free))


def layout_pairs(
    batch: dict[str, Tensor], shared_prefix: bool = True, padding_free: bool = False
) -> dict[str, Tensor]:
    """`pack_pairs` without the attention mask: the token layout and the scoring tensors, plus
    each token's group and branch from which `with_mask` builds the mask where it is used.
    Cheap to send to a GPU (the mask has T² entries per row); `collate_packed_pairs` computes it
    in the DataLoader's workers."""
    n_rows = batch["input_ids"].shape[0]
    lengths = batch["attention_mask"].sum(-1).tolist()
    ids = [row[:n] for row, n in zip(batch["input_ids"].tolist(), lengths, strict=True)]
    scored = [row[:n] for row, n in zip(batch["completion_mask"].tolist(), lengths, strict=True)]
    n_pairs = n_rows // 2
    pairs = [_pair_blocks(ids, scored, i, n_pairs + i, shared_prefix) for i in range(n_pairs)]
    # Padding-free rows are filled block by block (a shared pair, or one sequence); otherwise
    # each pair takes a row of its own.
    rows = _fill_rows([b for blocks in pairs for b in blocks]) if padding_free else pairs
    layout = _assemble(rows)
    layout["token_counts"] = batch["completion_mask"][:, 1:].sum(-1).cpu()
    device = batch["input_ids"].device
    return {k: v.to(device) for k, v in layout.items()}


def with_mask(layout: dict[str, Tensor]) -> dict[str, Tensor]:
    """A layout with its [rows, 1, T, T] attention mask, built on the layout's device (on a GPU
    in microseconds)."""
    packed = {k: v for k, v in layout.items() if k not in ("groups", "branches")}
    packed["attention_mask"] = _allowed(layout["groups"], layout["branches"])
    return packed


PACKED = "packed_"
"""Prefix of a packed layout's keys inside a standard batch (`collate_packed_pairs`)."""


def collate_packed_pairs(
    examples, pad_token_id: int, shared_prefix: bool, padding_free: bool
) -> dict[str, Tensor]:
    """`collate_pairs`, plus the packed layout of the same batch under `packed_*` keys: the
    standard rows stay for whatever reads them (metrics, the cached reference, a model that
    cannot be packed), the layout is ready when the model can."""
    from prefopt.data.collate import collate_pairs

    batch = collate_pairs(examples, pad_token_id)
    layout = layout_pairs(batch, shared_prefix, padding_free)
    batch.update({PACKED + k: v for k, v in layout.items()})
    return batch


def packed_part(batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The packed layout a batch carries (`collate_packed_pairs`), or None."""
    layout = {k[len(PACKED) :]: v for k, v in batch.items() if k.startswith(PACKED)}
    return layout or None


def _prompt_length(scored: list[bool]) -> int:
    """Tokens before the first scored one (the whole sequence when none is scored)."""
    return next((t for t, flag in enumerate(scored) if flag), len(scored))


def _pair_blocks(
    ids: list[list[int]], scored: list[list[bool]], chosen: int, rejected: int, share: bool
) -> list[_Block]:
    """One block `prompt | chosen | rejected` for a pair that shares its prompt, else one block
    per sequence."""
    p = _prompt_length(scored[chosen])
    shared = (
        share
        and p > 0
        and p == _prompt_length(scored[rejected])
        and ids[chosen][:p] == ids[rejected][:p]
    )
    if not shared:
        blocks = [_Block(), _Block()]
        for block, sequence in zip(blocks, (chosen, rejected)):
            block.add(ids[sequence], range(len(ids[sequence])), 0, _COMMON)
            _score(block, ids[sequence], scored[sequence], sequence, lambda q: q)
        return blocks

    block = _Block()
    block.add(ids[chosen][:p], range(p), 0, _COMMON)
    block.add(ids[chosen][p:], range(p, len(ids[chosen])), 0, _CHOSEN)
    _score(block, ids[chosen], scored[chosen], chosen, lambda q: q)
    start = block.add(ids[rejected][p:], range(p, len(ids[rejected])), 0, _REJECTED)
    # The rejected completion's first token is predicted by the LAST PROMPT position; later
    # ones by the rejected tokens, which sit after the chosen completion in packed order.
    _score(
        block, ids[rejected], scored[rejected], rejected, lambda q: q if q < p else start + q - p
    )
    return [block]


def _fill_rows(blocks: list[_Block]) -> list[list[_Block]]:
    """Blocks end to end in rows as long as the longest block, first fit, longest first: little
    padding is left, and no row is longer than a shared pair or a sequence. One row for the whole batch would leave
    none, but attention under a 4-D mask is dense over its row: its cost would grow with the
    square of the batch's tokens (4.6x slower than padded rows for 16 pairs on CPU)."""
    width = max(len(block.ids) for block in blocks)
    rows: list[list[_Block]] = []
    room: list[int] = []
    for block in sorted(blocks, key=lambda b: -len(b.ids)):
        row = next((i for i, free in enumerate(room) if free >= len(block.ids)), len(rows))
        if row == len(rows):
            rows.append([])
            room.append(width)
        rows[row].append(block)
        room[row] -= len(block.ids)
    return rows


def _score(block: _Block, ids: list[int], scored: list[bool], sequence: int, offset) -> None:
    """Token t of `sequence` is predicted at its position t-1 (`offset` maps it into the block)."""
    for t in range(1, len(ids)):
        if scored[t]:
            block.scored.append((offset(t - 1), ids[t], sequence))


def _assemble(rows: list[list[_Block]]) -> dict[str, Tensor]:
    width = max(sum(len(b.ids) for b in blocks) for blocks in rows)
    shape = (len(rows), width)
    input_ids = torch.zeros(shape, dtype=torch.long)  # padding: any id, it is masked out
    position_ids = torch.zeros(shape, dtype=torch.long)
    groups = torch.full(shape, -1, dtype=torch.long)  # padding forms its own group: no NaN rows
    branches = torch.zeros(shape, dtype=torch.long)
    score = []  # (row, position, label, sequence)
    for r, blocks in enumerate(rows):
        start, n_groups = 0, 0
        for block in blocks:
            end = start + len(block.ids)
            input_ids[r, start:end] = torch.tensor(block.ids)
            position_ids[r, start:end] = torch.tensor(block.positions)
            groups[r, start:end] = torch.tensor(block.groups) + n_groups
            branches[r, start:end] = torch.tensor(block.branches)
            score += [(r, start + offset, label, seq) for offset, label, seq in block.scored]
            start, n_groups = end, n_groups + max(block.groups) + 1
    columns = torch.tensor(score, dtype=torch.long).reshape(-1, 4).T
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "groups": groups,
        "branches": branches,
        "score_rows": columns[0],
        "score_positions": columns[1],
        "score_labels": columns[2],
        "score_sequences": columns[3],
    }


def _allowed(groups: Tensor, branches: Tensor) -> Tensor:
    """[R, 1, T, T] bool, True where query i may attend key j: same group, j <= i, and not a
    rejected-completion query looking at a chosen-completion key."""
    width = groups.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=groups.device).tril()
    same_group = groups[:, :, None] == groups[:, None, :]
    crossing = (branches[:, :, None] == _REJECTED) & (branches[:, None, :] == _CHOSEN)
    return (same_group & causal & ~crossing)[:, None]


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

    def __init__(self, prefix_sharing: str = "false", padding_free: bool = False):
        self.prefix_sharing = prefix_sharing_mode(prefix_sharing)
        self.padding_free = padding_free
        self._verdicts: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()

    @property
    def requested(self) -> bool:
        return self.prefix_sharing != "false" or self.padding_free

    def pack(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return pack_pairs(batch, self.prefix_sharing != "false", self.padding_free)

    def logps(
        self, model: nn.Module, batch: dict[str, Tensor], chunk_size: int | None
    ) -> CompletionLogps:
        """`completion_logps` of a standard paired batch, packed when this model can take it
        (with the layout the batch carries, when `collate_packed_pairs` made it)."""
        if self.requested and self.supported(model, chunk_size):
            layout = packed_part(batch)
            batch = with_mask(layout) if layout is not None else self.pack(batch)
        else:
            batch = {k: v for k, v in batch.items() if not k.startswith(PACKED)}
        return completion_logps(model, batch, chunk_size)

    def supported(self, model: nn.Module, chunk_size: int | None) -> bool:
        if model not in self._verdicts:
            self._verdicts[model] = self._decide(model, chunk_size)
        return self._verdicts[model]

    def _decide(self, model: nn.Module, chunk_size: int | None) -> bool:
        problem = _window_problem(model) or probe(model, self.pack, chunk_size)
        if problem is None:
            return True
        name = type(_unwrap(model)).__name__
        if self.prefix_sharing == "true":
            raise PrefoptError(
                f"model.prefix_sharing=true: {name} {problem}; set model.prefix_sharing=auto "
                "(or false) to score pairs as separate sequences"
            )
        log.info("prefix sharing: %s %s; scoring pairs as separate sequences", name, problem)
        return False


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
    not. Runs in eval mode (no dropout), without gradient."""
    parameter = next(model.parameters())
    batch = {k: v.to(parameter.device) for k, v in _probe_batch(_vocab_size(model)).items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
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
