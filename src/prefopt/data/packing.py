"""Pair layouts that score a batch with fewer tokens through the model: shared prompts, no padding.

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

The packed batch names, for each scored token, its row, the position whose hidden state
predicts it, its id and the logical sequence it belongs to (0..2B-1, chosen then rejected as in
`collate_pairs`); `completion_logps` scores that layout like the standard one. Whether a model
can take such a layout is `prefopt.model.packing`'s concern (a probe per model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from prefopt.data.collate import collate_pairs

# Branch of a token inside a shared layout: the rejected completion may not see the chosen one.
COMMON, CHOSEN, REJECTED = 0, 1, 2


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
    batch: dict[str, Tensor],
    shared_prefix: bool = True,
    padding_free: bool = False,
    row_tokens: int | None = None,
) -> dict[str, Tensor]:
    """The standard paired batch of `collate_pairs` (right padded, chosen rows first) laid out
    with shared prompts and/or without padding, ready for `completion_logps`; see the module
    docstring."""
    return with_mask(layout_pairs(batch, shared_prefix, padding_free, row_tokens))


def layout_pairs(
    batch: dict[str, Tensor],
    shared_prefix: bool = True,
    padding_free: bool = False,
    row_tokens: int | None = None,
) -> dict[str, Tensor]:
    """`pack_pairs` without the attention mask: the token layout and the scoring tensors, plus
    each token's group and branch from which `with_mask` builds the mask where it is used.
    Cheap to send to a GPU (the mask has T² entries per row); `collate_packed_pairs` computes it
    in the DataLoader's workers. A sparse model (`prefopt.model.attention`) builds its mask from
    the groups and branches itself. `row_tokens`: padding-free rows this long (at least the
    longest block)."""
    n_rows = batch["input_ids"].shape[0]
    lengths = batch["attention_mask"].sum(-1).tolist()
    ids = [row[:n] for row, n in zip(batch["input_ids"].tolist(), lengths, strict=True)]
    scored = [row[:n] for row, n in zip(batch["completion_mask"].tolist(), lengths, strict=True)]
    n_pairs = n_rows // 2
    pairs = [_pair_blocks(ids, scored, i, n_pairs + i, shared_prefix) for i in range(n_pairs)]
    # Padding-free rows are filled block by block (a shared pair, or one sequence); otherwise
    # each pair takes a row of its own.
    blocks = [block for pair in pairs for block in pair]
    rows = _fill_rows(blocks, row_tokens) if padding_free else pairs
    layout = _assemble(rows)
    layout["token_counts"] = batch["completion_mask"][:, 1:].sum(-1).cpu()
    device = batch["input_ids"].device
    return {k: v.to(device) for k, v in layout.items()}


def with_mask(layout: dict[str, Tensor]) -> dict[str, Tensor]:
    """A layout with its [rows, 1, T, T] attention mask, built on the layout's device (on a GPU
    in microseconds)."""
    packed = {k: v for k, v in layout.items() if k not in ("groups", "branches")}
    packed["attention_mask"] = allowed_mask(layout["groups"], layout["branches"])
    return packed


PACKED = "packed_"
"""Prefix of a packed layout's keys inside a standard batch (`collate_packed_pairs`)."""


def collate_packed_pairs(
    examples,
    pad_token_id: int,
    shared_prefix: bool,
    padding_free: bool,
    row_tokens: int | None = None,
) -> dict[str, Tensor]:
    """`collate_pairs`, plus the packed layout of the same batch under `packed_*` keys: the
    standard rows stay for whatever reads them (metrics, the cached reference, a model that
    cannot be packed), the layout is ready when the model can."""
    batch = collate_pairs(examples, pad_token_id)
    layout = layout_pairs(batch, shared_prefix, padding_free, row_tokens)
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
            block.add(ids[sequence], range(len(ids[sequence])), 0, COMMON)
            _score(block, ids[sequence], scored[sequence], sequence, lambda q: q)
        return blocks

    block = _Block()
    block.add(ids[chosen][:p], range(p), 0, COMMON)
    block.add(ids[chosen][p:], range(p, len(ids[chosen])), 0, CHOSEN)
    _score(block, ids[chosen], scored[chosen], chosen, lambda q: q)
    start = block.add(ids[rejected][p:], range(p, len(ids[rejected])), 0, REJECTED)
    # The rejected completion's first token is predicted by the LAST PROMPT position; later
    # ones by the rejected tokens, which sit after the chosen completion in packed order.
    _score(
        block, ids[rejected], scored[rejected], rejected, lambda q: q if q < p else start + q - p
    )
    return [block]


def _fill_rows(blocks: list[_Block], row_tokens: int | None = None) -> list[list[_Block]]:
    """Blocks end to end in rows of `row_tokens` (by default, and at least, as long as the
    longest block), first fit, longest first: little padding is left. By default no row is
    longer than a shared pair or a sequence: attention under a dense 4-D mask costs the square
    of its row (one row for 16 pairs ran 4.6x slower than padded rows on CPU). A sparse mask
    (`model.attention=flex`) costs what its blocks hold, so rows may hold many pairs."""
    width = max([len(block.ids) for block in blocks] + [row_tokens or 0])
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


def allowed_mask(groups: Tensor, branches: Tensor) -> Tensor:
    """[R, 1, T, T] bool, True where query i may attend key j: same group, j <= i, and not a
    rejected-completion query looking at a chosen-completion key."""
    width = groups.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=groups.device).tril()
    same_group = groups[:, :, None] == groups[:, None, :]
    crossing = (branches[:, :, None] == REJECTED) & (branches[:, None, :] == CHOSEN)
    return (same_group & causal & ~crossing)[:, None]
