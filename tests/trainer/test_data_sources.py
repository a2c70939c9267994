"""Datasets as users have them (trainer/data.py): JSON Lines, Parquet and `save_to_disk`
directories, with field mapping, a split, filtering, shuffling with the run's seed, and
errors that name the file, the row and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pytest

from trainer.config import DataSection, TrainerConfig
from trainer.data import DataError, read_rows
from trainer.run import check_data

RECORDS = [
    {"question": f"What is {i} + {i}?", "final": str(2 * i), "level": i % 3} for i in range(12)
]


def section(**data: Any) -> DataSection:
    return DataSection.model_validate(
        {"prompt_field": "question", "answer_field": "final", "task": "numeric", **data}
    )


@pytest.fixture
def parquet(tmp_path: Path) -> Path:
    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(RECORDS).to_parquet(str(path))
    return path


@pytest.fixture
def saved_dict(tmp_path: Path) -> Path:
    path = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(RECORDS[:8]),
         "test": datasets.Dataset.from_list(RECORDS[8:])}
    ).save_to_disk(str(path))  # fmt: skip
    return path


def test_parquet_rows_are_read_with_the_fields_mapped(parquet: Path) -> None:
    rows = read_rows(parquet, section(prompt_template="Q: {prompt}"))
    assert [(r.prompt, r.answer, r.task) for r in rows[:2]] == [
        ("Q: What is 0 + 0?", "0", "numeric"),
        ("Q: What is 1 + 1?", "2", "numeric"),
    ]
    assert len(rows) == 12


def test_a_saved_dataset_dict_gives_the_split_asked_for(saved_dict: Path) -> None:
    assert len(read_rows(saved_dict, section(), split="train")) == 8
    test = read_rows(saved_dict, section(), split="test")
    assert [r.answer for r in test] == ["16", "18", "20", "22"]
    with pytest.raises(DataError, match=r"saved: no split 'validation' \(splits: train, test\)"):
        read_rows(saved_dict, section(), split="validation")


def test_a_saved_dataset_without_splits_is_read_whole(tmp_path: Path) -> None:
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "one"))
    assert len(read_rows(tmp_path / "one", section(), split="anything")) == 12


def test_filter_shuffle_and_cut_follow_the_config_and_the_seed(parquet: Path) -> None:
    data = section(keep_where={"level": [1, 2]}, shuffle=True, max_rows=5)
    first = read_rows(parquet, data, seed=3)
    assert len(first) == 5
    assert all(int(r.answer) // 2 % 3 in (1, 2) for r in first)
    assert read_rows(parquet, data, seed=3) == first  # the run's seed decides the order
    others = [read_rows(parquet, data, seed=s) for s in range(4, 8)]
    assert any(rows != first for rows in others)
    unshuffled = read_rows(parquet, section(keep_where={"level": [1, 2]}, max_rows=5))
    assert [r.answer for r in unshuffled] == ["2", "4", "8", "10", "14"]
    with pytest.raises(DataError, match=r"no rows \(12 before data.keep_where\)"):
        read_rows(parquet, section(keep_where={"level": [7]}))
    with pytest.raises(DataError, match=r"rows\.parquet row 0: no field 'difficulty'"):
        read_rows(parquet, section(keep_where={"difficulty": [1]}))


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"question": "", "final": "1", "level": 0}, r"row 2: field 'question' is empty"),
        ({"question": "2+2?", "final": "four", "level": 0},
         r"row 2: field 'final' is 'four': not a number, which task 'numeric' compares"),
        ({"question": "2+2?", "final": None, "level": 0}, r"row 2: field 'final' is empty"),
    ],
)  # fmt: skip
def test_a_bad_table_row_is_named_by_file_row_and_field(
    tmp_path: Path, record: dict[str, Any], message: str
) -> None:
    path = tmp_path / "bad.parquet"
    datasets.Dataset.from_list([*RECORDS[:2], record]).to_parquet(str(path))
    with pytest.raises(DataError, match=r"bad\.parquet " + message):
        read_rows(path, section())


def test_nothing_is_fetched_from_the_hub(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"openai/gsm8k: no such file .* never from the Hugging "
                       r"Face Hub at run time: save it first"):  # fmt: skip
        read_rows(Path("openai/gsm8k"), section())
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file or directory$"):
        read_rows(tmp_path / "nope.jsonl", section())


def test_answers_the_verifier_cannot_read_are_refused_per_task_kind(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "pick", "final": "\\\\boxed{B}"}\n')
    assert read_rows(path, section(task="choice"))[0].answer == "\\boxed{B}"
    path.write_text('{"question": "pick", "final": "banana"}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl:1: .*not a choice letter"):
        read_rows(path, section(task="choice"))
    path.write_text('{"question": "sum", "final": "\\\\frac{1}{2}"}\n')
    assert read_rows(path, section(task="numeric"))[0].answer == "\\frac{1}{2}"
    assert read_rows(path, section(task="math"))  # math compares expressions: anything goes


def test_train_checks_both_files_with_their_splits(saved_dict: Path) -> None:
    config = TrainerConfig.model_validate({
        "data": {"train_path": str(saved_dict), "test_path": str(saved_dict),
                 "prompt_field": "question", "answer_field": "final", "task": "numeric",
                 "test_split": "validation"},
        "allocation": {"strategy": "grpo", "train_batch_size": 2, "n": 2},
    })  # fmt: skip
    with pytest.raises(DataError, match="no split 'validation'"):
        check_data(config)
