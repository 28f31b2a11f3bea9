"""Tests for stic.data.schemas: records round-trip through JSON and bad records name their field."""

from __future__ import annotations

import json
import re

import pytest

from stic.data.schemas import (
    REJECTED_KINDS,
    SCHEMA_VERSION,
    EvalItem,
    EvalResult,
    InstructSample,
    PairRecord,
    RecordError,
    Turn,
    read_eval_items,
    read_instruct,
    read_pairs,
)


def _pair_dict(**overrides) -> dict:
    data = {
        "id": "coco/000001.jpg",
        "image": "coco/000001.jpg",
        "prompt": "Illustrate the details of the picture.",
        "chosen": "A dog on a couch.",
        "rejected": "A dog on a couch next to a cat and a parrot.",
        "rejected_kind": "corrupt_lowres",
        "chosen_prompt": "Please provide a detailed description...",
        "rejected_prompt": "Summarize the visual content presented.",
        "corruption": {"name": "lowres", "short_side": 20},
        "model": "llava-hf/llava-1.5-7b-hf",
        "sampling": {"temperature": 0.2, "max_new_tokens": 1024},
        "chosen_finish": "stop",
        "rejected_finish": "length",
        "schema_version": SCHEMA_VERSION,
    }
    data.update(overrides)
    return data


def _sample_dict(**overrides) -> dict:
    data = {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus?"},
            {"from": "gpt", "value": "White and red."},
            {"from": "human", "value": "What feature can be seen on the back?"},
            {"from": "gpt", "value": "An advertisement."},
        ],
    }
    data.update(overrides)
    return data


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


# ----------------------------------------------------------------------------- PairRecord


def test_pair_round_trip_through_json():
    data = _pair_dict()
    record = PairRecord.from_dict(json.loads(json.dumps(data)))
    assert record.to_dict() == data
    assert PairRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert record.rejected_finish == "length"
    assert record.corruption == {"name": "lowres", "short_side": 20}


def test_pair_optional_fields_take_defaults():
    data = {k: _pair_dict()[k] for k in ("id", "image", "prompt", "chosen", "rejected")}
    data["rejected_kind"] = "bad_prompt"
    record = PairRecord.from_dict(data)
    assert record.corruption is None
    assert record.chosen_prompt == record.rejected_prompt == record.model == ""
    assert record.sampling == {}
    assert record.chosen_finish == record.rejected_finish == "stop"
    assert record.schema_version == SCHEMA_VERSION
    assert record.to_dict()["corruption"] is None


def test_pair_is_frozen():
    record = PairRecord.from_dict(_pair_dict())
    with pytest.raises(AttributeError):
        record.chosen = "x"


@pytest.mark.parametrize("kind", REJECTED_KINDS)
def test_pair_accepts_every_rejected_kind(kind):
    assert PairRecord.from_dict(_pair_dict(rejected_kind=kind)).rejected_kind == kind


def test_rejected_kinds():
    assert REJECTED_KINDS == ("bad_prompt", "corrupt_lowres", "corrupt_color", "imported")


@pytest.mark.parametrize("field", ["id", "image", "prompt", "chosen", "rejected", "rejected_kind"])
def test_pair_missing_required_field_is_named(field):
    data = _pair_dict()
    del data[field]
    with pytest.raises(RecordError, match=f"here: missing field '{field}'"):
        PairRecord.from_dict(data, where="here")


def test_pair_wrong_type_is_named():
    with pytest.raises(RecordError, match=r"p: field 'chosen' must be str, got int"):
        PairRecord.from_dict(_pair_dict(chosen=3), where="p")
    with pytest.raises(RecordError, match=r"field 'corruption' must be dict, got list"):
        PairRecord.from_dict(_pair_dict(corruption=[1]))


def test_pair_bool_is_not_a_str():
    with pytest.raises(RecordError, match=r"field 'rejected' must be str, got bool"):
        PairRecord.from_dict(_pair_dict(rejected=True))


def test_pair_bool_is_not_an_int():
    with pytest.raises(RecordError, match=r"field 'schema_version' must be int, got bool"):
        PairRecord.from_dict(_pair_dict(schema_version=True))


def test_pair_bad_rejected_kind_is_named():
    with pytest.raises(RecordError, match=r"field 'rejected_kind' must be one of .*'corrupt'"):
        PairRecord.from_dict(_pair_dict(rejected_kind="corrupt"))


def test_pair_not_an_object():
    with pytest.raises(RecordError, match=r"x: expected a JSON object, got list"):
        PairRecord.from_dict([1, 2], where="x")


# ----------------------------------------------------------------------------- InstructSample


def test_instruct_round_trip_through_json():
    data = _sample_dict()
    sample = InstructSample.from_dict(json.loads(json.dumps(data)))
    assert sample.to_dict() == data
    assert list(sample.to_dict()) == ["id", "image", "conversations"]  # LLaVA's key order
    assert sample.exchanges() == [
        ("<image>\nWhat are the colors of the bus?", "White and red."),
        ("What feature can be seen on the back?", "An advertisement."),
    ]
    assert sample.conversations[1] == Turn("gpt", "White and red.")


def test_instruct_infusion_round_trip_and_text_only_sample():
    data = _sample_dict(stic_infusion={"description": "A bus.", "prompt": "Summarize."})
    del data["image"]
    sample = InstructSample.from_dict(data)
    assert sample.image is None
    assert sample.infusion == {"description": "A bus.", "prompt": "Summarize."}
    out = sample.to_dict()
    assert "image" not in out
    assert out == data
    assert InstructSample.from_dict(json.loads(json.dumps(out))) == sample


def test_instruct_int_id_becomes_str():
    assert InstructSample.from_dict(_sample_dict(id=33471)).id == "33471"


def test_instruct_bool_id_rejected():
    with pytest.raises(RecordError, match=r"field 'id' must be str or int, got bool"):
        InstructSample.from_dict(_sample_dict(id=True))


def test_instruct_missing_conversations_is_named():
    data = _sample_dict()
    del data["conversations"]
    with pytest.raises(RecordError, match=r"s\[3\]: missing field 'conversations'"):
        InstructSample.from_dict(data, where="s[3]")


def test_instruct_bad_order_is_named():
    data = _sample_dict()
    data["conversations"][2]["from"] = "gpt"
    with pytest.raises(
        RecordError, match=r"s: conversations\[2\]: expected 'from': 'human', got 'gpt'"
    ):
        InstructSample.from_dict(data, where="s")


def test_instruct_starting_with_gpt_is_refused():
    data = _sample_dict()
    data["conversations"] = [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]
    with pytest.raises(RecordError, match=r"conversations\[0\]: expected 'from': 'human'"):
        InstructSample.from_dict(data)


@pytest.mark.parametrize("n_turns", [0, 1, 3])
def test_instruct_incomplete_exchange_is_refused(n_turns):
    data = _sample_dict()
    data["conversations"] = data["conversations"][:n_turns]
    with pytest.raises(RecordError, match=f"must hold human/gpt pairs, got {n_turns} turns"):
        InstructSample.from_dict(data)


def test_instruct_turn_missing_value_is_named():
    data = _sample_dict()
    del data["conversations"][1]["value"]
    with pytest.raises(RecordError, match=r"conversations\[1\]: missing field 'value'"):
        InstructSample.from_dict(data)


def test_instruct_turn_value_wrong_type_is_named():
    data = _sample_dict()
    data["conversations"][0]["value"] = ["<image>", "Q"]
    with pytest.raises(RecordError, match=r"conversations\[0\]: field 'value' must be str"):
        InstructSample.from_dict(data)


# ----------------------------------------------------------------------------- Eval records


def test_eval_item_from_dict():
    item = EvalItem.from_dict(
        {"id": 7, "image": "a.png", "question": "Q?", "answer": 3, "choices": ["x", "y"]}
    )
    assert item == EvalItem(id="7", image="a.png", question="Q?", answer="3", choices=("x", "y"))
    no_choices = EvalItem.from_dict({"id": "a", "image": "a.png", "question": "Q", "answer": "b"})
    assert no_choices.choices is None


def test_eval_item_errors_name_the_field():
    with pytest.raises(RecordError, match=r"i: missing field 'question'"):
        EvalItem.from_dict({"id": "a", "image": "a.png", "answer": "b"}, where="i")
    with pytest.raises(RecordError, match=r"field 'choices' must be a list of strings"):
        EvalItem.from_dict(
            {"id": "a", "image": "a.png", "question": "Q", "answer": "b", "choices": ["x", 1]}
        )
    with pytest.raises(RecordError, match=r"field 'image' must be str, got bool"):
        EvalItem.from_dict({"id": "a", "image": False, "question": "Q", "answer": "b"})
    with pytest.raises(RecordError, match=r"field 'answer' must be str or int or float, got bool"):
        EvalItem.from_dict({"id": "a", "image": "a.png", "question": "Q", "answer": True})


def test_eval_result_to_dict_round_trips_through_json():
    result = EvalResult(id="1", question="Q?", answer="yes", prediction="Yes", correct=True)
    out = json.loads(json.dumps(result.to_dict()))
    assert out == {
        "id": "1",
        "question": "Q?",
        "answer": "yes",
        "prediction": "Yes",
        "correct": True,
    }
    assert EvalResult(**out) == result
    dar = EvalResult("2", "Q", "a", "b", False, description="A picture.")
    assert dar.to_dict()["description"] == "A picture."
    assert EvalResult(**json.loads(json.dumps(dar.to_dict()))) == dar


# ----------------------------------------------------------------------------- readers


def test_read_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [_pair_dict(id="a"), _pair_dict(id="b", rejected_kind="bad_prompt", corruption=None)]
    _write_jsonl(path, rows)
    pairs = read_pairs(path)
    assert [p.to_dict() for p in pairs] == rows


def test_read_pairs_duplicate_id_names_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    _write_jsonl(path, [_pair_dict(id="a"), _pair_dict(id="b"), _pair_dict(id="a")])
    with pytest.raises(RecordError, match=rf"{re.escape(str(path))}:3: duplicate id 'a'"):
        read_pairs(path)


def test_read_pairs_bad_line_names_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    _write_jsonl(path, [_pair_dict(id="a"), _pair_dict(id="b", rejected_kind="nope")])
    with pytest.raises(RecordError, match=rf"{re.escape(str(path))}:2: field 'rejected_kind'"):
        read_pairs(path)


def test_read_pairs_empty_file_raises(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{re.escape(str(path))}: no records"):
        read_pairs(path)


@pytest.mark.parametrize("reader", [read_pairs, read_instruct, read_eval_items])
def test_readers_say_a_missing_file_is_missing(tmp_path, reader):
    # A mistyped --data/--pairs path must not read as an empty file ("no records").
    path = tmp_path / "absent.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        reader(path)


def test_read_instruct(tmp_path):
    path = tmp_path / "data.json"
    rows = [_sample_dict(id="x"), _sample_dict(id="y")]
    path.write_text(json.dumps(rows), encoding="utf-8")
    assert [s.to_dict() for s in read_instruct(path)] == rows


def test_read_instruct_duplicate_id_names_the_index(tmp_path):
    path = tmp_path / "data.json"
    # 5 and "5" are the same id once read (ids are strings).
    rows = [_sample_dict(id="4"), _sample_dict(id="5"), _sample_dict(id=5)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{re.escape(str(path))}\[2\]: duplicate id '5'"):
        read_instruct(path)


def test_read_instruct_bad_sample_names_the_index(tmp_path):
    path = tmp_path / "data.json"
    bad = _sample_dict(id="b")
    bad["conversations"][0]["from"] = "user"
    path.write_text(json.dumps([_sample_dict(id="a"), bad]), encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{re.escape(str(path))}\[1\]: conversations\[0\]"):
        read_instruct(path)


def test_read_instruct_empty_list_and_non_list(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{re.escape(str(path))}: no records"):
        read_instruct(path)
    path.write_text('{"id": "a"}', encoding="utf-8")
    with pytest.raises(RecordError, match=r"expected a JSON list of samples, got dict"):
        read_instruct(path)


def test_read_eval_items(tmp_path):
    path = tmp_path / "vqa.jsonl"
    _write_jsonl(
        path,
        [
            {"id": 1, "image": "a.png", "question": "Q1", "answer": "yes"},
            {"id": 2, "image": "b.png", "question": "Q2", "answer": "A", "choices": ["c", "d"]},
        ],
    )
    items = read_eval_items(path)
    assert [i.id for i in items] == ["1", "2"]
    assert items[1].choices == ("c", "d")


def test_read_eval_items_duplicate_and_empty(tmp_path):
    path = tmp_path / "vqa.jsonl"
    row = {"id": "q", "image": "a.png", "question": "Q", "answer": "a"}
    _write_jsonl(path, [row, row])
    with pytest.raises(RecordError, match=rf"{re.escape(str(path))}:2: duplicate id 'q'"):
        read_eval_items(path)
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{re.escape(str(path))}: no records"):
        read_eval_items(path)


def test_read_eval_items_bool_question_names_the_line(tmp_path):
    path = tmp_path / "vqa.jsonl"
    _write_jsonl(
        path,
        [
            {"id": "a", "image": "a.png", "question": "Q", "answer": "a"},
            {"id": "b", "image": "a.png", "question": True, "answer": "a"},
        ],
    )
    with pytest.raises(
        RecordError, match=rf"{re.escape(str(path))}:2: field 'question' must be str, got bool"
    ):
        read_eval_items(path)


def test_read_eval_items_keeps_a_last_line_without_newline(tmp_path):
    # VQA files are written by people and other tools; many end without a final newline.
    # Only files stic appends to can have a torn last line.
    path = tmp_path / "vqa.jsonl"
    rows = [
        {"id": "a", "image": "a.png", "question": "Q1", "answer": "x"},
        {"id": "b", "image": "b.png", "question": "Q2", "answer": "y"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    assert [i.id for i in read_eval_items(path)] == ["a", "b"]
    path.write_text(json.dumps(rows[0]), encoding="utf-8")  # a one-question file
    assert [i.id for i in read_eval_items(path)] == ["a"]


def test_read_eval_items_bad_last_line_is_an_error_not_dropped(tmp_path):
    path = tmp_path / "vqa.jsonl"
    row = {"id": "a", "image": "a.png", "question": "Q1", "answer": "x"}
    path.write_text(json.dumps(row) + '\n{"id": "b", "image": ', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2"):
        read_eval_items(path)


@pytest.mark.parametrize("line", ["[1, 2]", '"a question"', "3", "null"])
@pytest.mark.parametrize("reader", [read_eval_items, read_pairs])
def test_a_line_that_is_not_an_object_is_one_error_naming_file_and_line(tmp_path, reader, line):
    path = tmp_path / "data.jsonl"
    row = _pair_dict() if reader is read_pairs else {"id": "a", "image": "a.png"}
    path.write_text(json.dumps({**row, "question": "Q", "answer": "x"}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: expected a JSON object") as e:
        reader(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("record", [EvalItem, PairRecord, InstructSample])
def test_from_dict_of_a_non_object_is_a_record_error(record):
    # Optional fields are read too: a list must not fail with AttributeError on .get.
    with pytest.raises(RecordError, match="where: expected a JSON object, got list"):
        record.from_dict([1, 2], where="where")
