"""`python -m prefopt.data.check`: the data a run would train on, prepared and profiled without
training; `summary.length_spread`, the token lengths against the caps."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from prefopt.data.check import main
from prefopt.data.summary import length_spread

from ..conftest import user_error
from ..guide_files import tiny_checkpoint


def paired(rows: list[tuple[int, int, int, int]]) -> Dataset:
    """Pairs given as (chosen length, chosen prompt length, rejected length, its prompt length)."""
    return Dataset.from_dict(
        {
            "chosen_input_ids": [[7] * c for c, _, _, _ in rows],
            "chosen_prompt_length": [p for _, p, _, _ in rows],
            "rejected_input_ids": [[7] * r for _, _, r, _ in rows],
            "rejected_prompt_length": [p for _, _, _, p in rows],
        }
    )


def test_length_spread_by_hand():
    """max_length 16, max_prompt_length 8. Longest sides: 10, 16, 9, 5 -> longest 16; the 95th
    percentile (the next value up from rank 0.95·3 = 2.85 of [5, 9, 10, 16]) is 16. At a cap:
    the pair of 16 tokens, and the pair whose prompt is 8 tokens: 2, one of them by its prompt."""
    pairs = paired([(10, 4, 8, 4), (16, 6, 12, 6), (9, 8, 7, 8), (5, 2, 5, 2)])
    assert length_spread(pairs, 16, 8) == {
        "longest_tokens": 16,
        "p95_tokens": 16,
        "at_a_cap": 2,
        "prompt_at_max_prompt_length": 1,
    }
    examples = Dataset.from_dict({"input_ids": [[1] * 3, [1] * 12], "prompt_length": [2, 8]})
    assert length_spread(examples, 12, 8) == {
        "longest_tokens": 12,
        "p95_tokens": 12,
        "at_a_cap": 1,
        "prompt_at_max_prompt_length": 1,
    }
    assert length_spread(paired([]).select([]), 16, 8) == {}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("check_model") / "my-model"
    tiny_checkpoint(folder)
    return folder


def test_the_check_prints_rows_kept_dropped_and_truncated_pairs(tmp_path, model_dir, capsys):
    """Five short pairs, one whose long prompt is cut to max_prompt_length (kept, at a cap) and
    one whose completions differ only past max_length (identical once cut: dropped, counted as
    truncated_identical, apart from too_long)."""
    rows = [{"prompt": "hi", "chosen": " hello there", "rejected": " go away"}] * 5
    rows.append({"prompt": "the quick brown fox " * 8, "chosen": " hello", "rejected": " go"})
    same_start = " the weather is nice there" * 6
    rows.append({"prompt": "hi", "chosen": same_start + " yes", "rejected": same_start + " no"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    main(
        [
            "model=local", f"model.path={model_dir}", "data=local", f"data.path={path}",
            f"data.val_path={path}", "data.max_length=24", "data.max_prompt_length=8",
            "data.on_invalid=skip",
        ]
    )  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "loss=dpo data.source=local data.max_length=24 data.max_prompt_length=8"
    assert lines[1] == "train: pairs.jsonl [train]"
    train = dict(line.split() for line in lines[2 : lines.index("val: pairs.jsonl [validation]")])
    assert train["layout"] == "explicit"
    assert (train["rows"], train["pairs"]) == ("7", "6")
    assert (train["dropped_too_long"], train["dropped_truncated_identical"]) == ("0", "1")
    assert (train["at_a_cap"], train["prompt_at_max_prompt_length"]) == ("1", "1")
    assert int(train["longest_tokens"]) <= 24


def test_mistakes_are_one_line_with_exit_status_2(capsys):
    assert "loss.betta" in user_error(capsys, main, ["loss.betta=0.1"])
    assert "To append" not in user_error(capsys, main, ["loss.betta=0.1"])
    assert "loss=dpoo: there is no such loss" in user_error(capsys, main, ["loss=dpoo"])
    assert "data.path" in user_error(capsys, main, ["data=local"])
    assert "--multirun" in user_error(capsys, main, ["--multirun", "loss.beta=0.1,0.2"])
