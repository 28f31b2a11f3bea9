"""The report's data assembly (stic.tools.report), fast and without a browser: every value the
page gets comes from the right record and field (chosen vs rejected, their prompts, finishes and
lengths, the verdict's source), where images and the length-counting model come from (given,
then the pairs' config, then the DPO run's / the pairs' own records), the audit counts what the
rows hold and warns above its thresholds in its exact words, and a result is filed under the
weights, data, DaR setting and base it belongs to (issue 22; each test kills mutants that
survived `make mutation`)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from stic.data.schemas import PairRecord
from stic.runtime.files import atomic_write_json
from stic.tools import report
from stic.tools.report import ReportSources, audit, collect_pairs

# Every text distinct, so that a value taken from the wrong field shows.
PAIRS = [
    PairRecord(
        id="a.jpg",
        image="a.jpg",
        prompt="Describe the image.",
        chosen="one two three four five six",
        rejected="seven eight nine",
        rejected_kind="bad_prompt",
        chosen_prompt="Look closely and describe.",
        rejected_prompt="Imagine a scene and describe it.",
        chosen_finish="stop",
        rejected_finish="length",
    ),
    PairRecord(
        id="b",
        image="sub/b.png",
        prompt="What is in the picture?",
        chosen="a red square",
        rejected="a red square on grey ground with trees",
        rejected_kind="corrupt_lowres",
        chosen_prompt="Describe the image.",  # the same text as pair a's prompt: one entry
        rejected_prompt="What is in the picture?",
        corruption={"kind": "lowres", "short_side": 4},
    ),
    PairRecord(
        id="c.jpg",
        image="c.jpg",
        prompt="Describe the image.",
        chosen="alpha beta gamma delta",
        rejected="alpha beta gamma delta",  # identical: dropped
        rejected_kind="corrupt_lowres",
        chosen_prompt="Look closely and describe.",
        rejected_prompt="Imagine a scene and describe it.",
    ),
]


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in PAIRS), encoding="utf-8")
    return path


def rows_by_id(data: dict) -> dict[str, dict]:
    return {row["id"]: row for row in data["rows"]}


def test_each_column_comes_from_its_own_field(pairs_file):
    data = collect_pairs(ReportSources(pairs=pairs_file))
    assert [r["id"] for r in data["rows"]] == ["a.jpg", "b", "c.jpg"]  # the file's order
    prompts = data["prompts"]
    a, b, _ = data["rows"]
    assert a["c"] == "one two three four five six" and a["r"] == "seven eight nine"
    assert (a["cf"], a["rf"]) == ("stop", "length")
    assert (b["cf"], b["rf"]) == (PAIRS[1].chosen_finish, PAIRS[1].rejected_finish)
    assert (a["cl"], a["rl"], a["ratio"]) == (6, 3, 2.0)  # words: no tokenizer on disk
    assert (b["cl"], b["rl"], b["ratio"]) == (3, 8, 0.375)
    assert prompts[a["p"]] == "Describe the image."
    assert prompts[a["cp"]] == "Look closely and describe."
    assert prompts[a["rp"]] == "Imagine a scene and describe it."
    assert prompts[b["p"]] == "What is in the picture?" and prompts[b["rp"]] == prompts[b["p"]]
    assert prompts[b["cp"]] == "Describe the image."
    # Each prompt text once, in the order first seen.
    assert prompts == [
        "Describe the image.",
        "Look closely and describe.",
        "Imagine a scene and describe it.",
        "What is in the picture?",
    ]
    assert (a["kind"], b["kind"]) == ("bad_prompt", "corrupt_lowres")
    assert "image" not in a and b["image"] == "sub/b.png"  # only where it is not the id
    assert a["corr"] == "" and b["corr"] == "lowres: short_side 4"
    assert data["path"] == str(pairs_file)
    assert data["length_unit"] == "words (whitespace split)"


def test_verdicts_recomputed_with_the_default_filters_name_the_filter(pairs_file):
    data = collect_pairs(ReportSources(pairs=pairs_file))
    rows = rows_by_id(data)
    assert {i: r["v"] for i, r in rows.items()} == {
        "a.jpg": "truncated",
        "b": "",
        "c.jpg": "identical",
    }
    assert {i: r["nd"] for i, r in rows.items()} == {"a.jpg": False, "b": False, "c.jpg": True}
    assert data["verdict_source"] == "recomputed here with the default filters"
    assert data["threshold"] == 0.9


def test_verdicts_come_from_the_dpo_runs_dropped_pairs_when_it_has_them(pairs_file, tmp_path):
    dpo = tmp_path / "dpo"
    dpo.mkdir()
    atomic_write_json(dpo / "stic_manifest.json", {"stage": "dpo", "config": {}})
    (dpo / "dropped_pairs.jsonl").write_text(
        json.dumps({"id": "b", "reason": "refusal"}) + "\n" + json.dumps({"id": "c.jpg"}) + "\n"
    )
    data = collect_pairs(ReportSources(pairs=pairs_file, dpo=dpo))
    # What the stage dropped, not what the filters would say now (a was not dropped there).
    assert {r["id"]: r["v"] for r in data["rows"]} == {"a.jpg": "", "b": "refusal", "c.jpg": "?"}
    assert "dropped_pairs.jsonl" in data["verdict_source"]


def test_images_come_from_the_given_folder_and_problems_are_counted(pairs_file, tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (400, 300), (200, 30, 90)).save(images / "a.jpg")
    # A gradient: lowered to 4 px, it is visibly another image.
    Image.linear_gradient("L").resize((400, 300)).convert("RGB").save(images / "sub" / "b.png")
    data = collect_pairs(ReportSources(pairs=pairs_file, images=images), large_thumbnails=1)
    a, b, c = data["rows"]
    assert a["img"].startswith("data:image/jpeg") and a["cimg"] == "" and a["why"] == ""
    assert b["img"].startswith("data:image/jpeg") and b["cimg"].startswith("data:image/jpeg")
    assert b["cimg"] != b["img"]
    assert c["img"] == "" and c["why"].startswith("image not shown")
    assert data["image_problems"] == {"image not shown": 1}
    assert data["images"] == str(images) and data["large_thumbnails"] == 1
    # The first row has the large thumbnail, the others the small one.
    assert max(_decoded(a["img"]).size) == report.THUMB_PX
    assert max(_decoded(b["img"]).size) == max(_decoded(b["cimg"]).size) == report.SMALL_THUMB_PX


def _decoded(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_the_audit_counts_what_the_rows_hold(pairs_file):
    summary = audit(collect_pairs(ReportSources(pairs=pairs_file)))
    assert summary["n"] == 3
    assert summary["kinds"] == ["bad_prompt", "corrupt_lowres"]
    everything, lowres = summary["by_kind"]["all"], summary["by_kind"]["corrupt_lowres"]
    assert (everything["n"], everything["kept"]) == (3, 1)
    assert everything["dropped"] == {
        "identical": 1,
        "empty": 0,
        "truncated": 1,
        "refusal": 0,
        "near_duplicate": 0,
    }
    assert (lowres["n"], lowres["kept"], lowres["dropped"]["identical"]) == (2, 1, 1)
    assert (everything["median_chosen"], everything["median_rejected"]) == (4, 4)
    assert everything["median_ratio"] == 1.0  # ratios 2.0, 0.375, 1.0
    assert (lowres["median_chosen"], lowres["median_rejected"]) == (3.5, 6)
    assert everything["truncated"] == 1 and everything["near_duplicate"] == 1
    assert summary["by_kind"]["bad_prompt"]["truncated"] == 1
    assert lowres["truncated"] == 0
    # 1 of 3 truncated is above 5%: warned; bad_prompt's chosen answers are twice as long.
    assert any("1 of 3 pairs" in w for w in summary["warnings"])
    longer = [w for w in summary["warnings"] if "systematically longer" in w]
    assert len(longer) == 1 and "bad_prompt 2.00×" in longer[0] and "lowres" not in longer[0]


def _result(folder: Path, name: str, document: dict, config: dict | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    atomic_write_json(path, document)
    if config is not None:
        atomic_write_json(folder / f"{name}.json.manifest.json", {"config": config})
    return path


def test_a_result_is_filed_under_the_weights_it_evaluated(tmp_path):
    bench = tmp_path / "run1" / "bench"
    base = _result(bench, "pope", {"benchmark": "pope_random"}, {"adapter": None})
    stage1 = _result(bench, "pope_s1", {"benchmark": "pope_random"}, {"adapter": "runs/x/dpo"})
    final = _result(
        bench / "dar", "pope", {"benchmark": "pope_random", "dar": True}, {"adapter": "x/sft"}
    )
    other = _result(tmp_path / "loose", "r", {"adapter": "my_adapter"}, None)
    described = {p: report._describe_result(p, "bench") for p in (base, stage1, final, other)}
    assert [described[p]["at"] for p in (base, stage1, final, other)] == [
        "base",
        "stage1",
        "final",
        "my_adapter",
    ]
    assert [described[p]["dar"] for p in (base, stage1, final, other)] == [
        False,
        False,
        True,
        False,
    ]
    assert described[final]["name"] == "dar/pope" and described[final]["run"] == "run1"
    assert described[other]["name"] == "r" and described[other]["run"] == "loose"
    assert described[base]["data"] == "pope_random"
    assert described[other]["data"] is None
    assert report._describe_result(other, "eval")["data"] is None


def _described(at: str, data: str | None, dar: bool, name: str) -> dict:
    return {"at": at, "data": data, "dar": dar, "name": name}


def test_the_base_of_a_result_is_the_base_on_the_same_data_and_dar_setting():
    base_plain = _described("base", "pope", False, "base")
    base_dar = _described("base", "pope", True, "base dar")
    base_other = _described("base", "mmvet", False, "base mmvet")
    stic_dar = _described("final", "pope", True, "stic dar")
    stic_plain = _described("final", "pope", False, "stic")
    mmvet = _described("final", "mmvet", True, "stic mmvet")
    results = [base_plain, base_dar, base_other, stic_dar, stic_plain, mmvet]
    assert report._base_for(stic_dar, results, "data") is base_dar
    assert report._base_for(stic_plain, results, "data") is base_plain
    # No base with the same DaR setting on that data: the base on that data.
    assert report._base_for(mmvet, results, "data") is base_other
    assert report._base_for(base_plain, results, "data") is base_dar  # never itself
    assert report._base_for(_described("final", "textvqa", False, "t"), results, "data") is None


def test_without_recorded_data_only_a_single_base_is_taken():
    unknown = _described("final", None, False, "stic")
    one_base = [_described("base", "pope", False, "base"), unknown]
    assert report._base_for(unknown, one_base, "data") is one_base[0]
    two_bases = [*one_base, _described("base", "mmvet", False, "base 2")]
    assert report._base_for(unknown, two_bases, "data") is None


@pytest.mark.parametrize(
    "item, correct",
    [
        ({"correct": True, "score": 0}, True),
        ({"correct": False, "score": 1}, False),
        ({"score": 1}, True),
        ({"score": 0.5}, True),
        ({"score": 0}, False),
        ({"score": -1}, False),
        ({"score": "1"}, False),
        ({}, False),
    ],
)
def test_an_item_is_right_by_its_correct_flag_or_a_positive_score(item, correct):
    assert report._item_correct(item) is correct


# ----------------------------------------------------------------------------- what collect_pairs reads


def test_every_row_field_and_top_level_key(pairs_file):
    data = collect_pairs(ReportSources(pairs=pairs_file))
    assert set(data) == {
        "rows",
        "prompts",
        "length_unit",
        "verdict_source",
        "threshold",
        "images",
        "image_problems",
        "large_thumbnails",
        "path",
    }
    row_keys = {"id", "kind", "p", "cp", "rp", "c", "r", "cf", "rf", "cl", "rl", "ratio", "v"}
    row_keys |= {"nd", "corr", "img", "cimg", "why"}
    a, b, c = data["rows"]
    assert set(a) == set(c) == row_keys and set(b) == row_keys | {"image"}
    # No image folder given or recorded: none shown, and the page says so (not "None").
    assert data["images"] is None and data["image_problems"] == {"no image folder given": 3}
    assert [r["why"] for r in data["rows"]] == ["no image folder given"] * 3
    assert data["large_thumbnails"] == 3  # the default 1,000 capped at the rows there are


def _write_pairs(path: Path, pairs: list[PairRecord], config: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in pairs), encoding="utf-8")
    if config is not None:  # what `stic pairs` records beside its output
        atomic_write_json(path.with_name(path.name + ".manifest.json"), {"config": config})
    return path


def _dpo(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "stic_manifest.json", {"stage": "dpo", "config": config})
    return folder


def _image_folder(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    for name in ("a.jpg", "c.jpg", "sub/b.png"):
        Image.new("RGB", (40, 30), (200, 30, 90)).save(folder / name)
    return folder


def _shown(data: dict) -> list[bool]:
    return [row["img"].startswith("data:image/jpeg") for row in data["rows"]]


def test_images_come_from_the_pairs_config_when_none_is_given(tmp_path):
    images = _image_folder(tmp_path / "images")
    pairs = _write_pairs(tmp_path / "pairs.jsonl", PAIRS, {"images": str(images)})
    data = collect_pairs(ReportSources(pairs=pairs))
    assert data["images"] == str(images) and _shown(data) == [True, True, True]
    assert data["image_problems"] == {}
    # A folder given on the command line wins over the recorded one.
    given = tmp_path / "given"
    given.mkdir()
    data = collect_pairs(ReportSources(pairs=pairs, images=given))
    assert data["images"] == str(given) and _shown(data) == [False, False, False]


def test_images_come_from_the_dpo_config_when_neither_given_nor_in_the_pairs_config(tmp_path):
    images = _image_folder(tmp_path / "images")
    pairs = _write_pairs(tmp_path / "pairs.jsonl", PAIRS, {"model": "", "images": ""})
    dpo = _dpo(tmp_path / "dpo", {"images": str(images)})
    data = collect_pairs(ReportSources(pairs=pairs, dpo=dpo))
    assert data["images"] == str(images) and _shown(data) == [True, True, True]
    # The pairs' own record comes before the DPO run's, the given folder before both.
    elsewhere = _image_folder(tmp_path / "elsewhere")
    _write_pairs(pairs, PAIRS, {"images": str(elsewhere)})
    assert collect_pairs(ReportSources(pairs=pairs, dpo=dpo))["images"] == str(elsewhere)
    given = tmp_path / "given"
    given.mkdir()
    data = collect_pairs(ReportSources(pairs=pairs, dpo=dpo, images=given))
    assert data["images"] == str(given) and _shown(data) == [False, False, False]


def test_each_missing_image_is_counted(pairs_file, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    data = collect_pairs(ReportSources(pairs=pairs_file, images=empty))
    assert data["image_problems"] == {"image not shown": 3}
    assert all(r["why"].startswith("image not shown: ") for r in data["rows"])


def test_without_thumbnails_no_image_is_read(pairs_file, tmp_path):
    images = _image_folder(tmp_path / "images")
    (images / "c.jpg").unlink()  # would be a problem if images were read
    data = collect_pairs(ReportSources(pairs=pairs_file, images=images), thumbnails=False)
    assert [(r["img"], r["cimg"], r["why"]) for r in data["rows"]] == [("", "", "")] * 3
    assert data["image_problems"] == {}


def test_a_ratio_has_three_decimals_and_none_without_a_rejected_text(tmp_path):
    third = PairRecord(**{**PAIRS[0].to_dict(), "id": "t", "chosen": "x", "rejected": "a b c"})
    empty = PairRecord(**{**PAIRS[0].to_dict(), "id": "e", "chosen": "x y", "rejected": " "})
    data = collect_pairs(ReportSources(pairs=_write_pairs(tmp_path / "p.jsonl", [third, empty])))
    t, e = data["rows"]
    assert (t["cl"], t["rl"], t["ratio"]) == (1, 3, 0.333)
    assert (e["cl"], e["rl"], e["ratio"], e["v"]) == (2, 0, None, "empty")


def test_verdicts_recomputed_with_a_dpo_run_without_dropped_pairs_say_so(pairs_file, tmp_path):
    dpo = _dpo(tmp_path / "dpo", {"filter_truncated": False})
    data = collect_pairs(ReportSources(pairs=pairs_file, dpo=dpo))
    assert data["verdict_source"] == "recomputed here with the DPO config's filter settings"
    assert [r["v"] for r in data["rows"]] == ["", "", "identical"]


def test_a_dpo_config_without_a_threshold_keeps_its_switches(pairs_file, tmp_path):
    # An older or hand-written config: no near_duplicate_threshold, one filter off.
    dpo = _dpo(tmp_path / "dpo", {"filter_truncated": False, "filter_identical": False})
    data = collect_pairs(ReportSources(pairs=pairs_file, dpo=dpo))
    assert data["threshold"] == 0.9
    # c's texts are identical: with that filter off it is dropped as a near duplicate.
    assert [r["v"] for r in data["rows"]] == ["", "", "near_duplicate"]


def test_a_dropped_pairs_line_without_an_id_is_refused_naming_the_line(pairs_file, tmp_path):
    dpo = _dpo(tmp_path / "dpo", {})
    (dpo / "dropped_pairs.jsonl").write_text('{"id": "b", "reason": "refusal"}\n{"reason": "x"}\n')
    with pytest.raises(ValueError, match=r"dropped_pairs\.jsonl:2: a record without 'id'"):
        collect_pairs(ReportSources(pairs=pairs_file, dpo=dpo))


def _tokenizer(folder: Path) -> str:
    """A tokenizer.json that makes one token of each character: counts unlike words."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True)
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tokenizer.save(str(folder / "tokenizer.json"))
    return str(folder)


def _lengths(data: dict) -> tuple[str, list[tuple[int, int]]]:
    return data["length_unit"], [(r["cl"], r["rl"]) for r in data["rows"]]


CHARACTERS = [(len(p.chosen), len(p.rejected)) for p in PAIRS]


def test_lengths_are_counted_with_the_given_model_before_the_recorded_ones(tmp_path):
    given, recorded = _tokenizer(tmp_path / "given_tok"), _tokenizer(tmp_path / "recorded_tok")
    pairs = _write_pairs(tmp_path / "pairs.jsonl", PAIRS, {"model": recorded})
    data = collect_pairs(ReportSources(pairs=pairs, model=given))
    assert _lengths(data) == ("tokens (given_tok tokenizer)", CHARACTERS)
    alone = _write_pairs(tmp_path / "alone.jsonl", PAIRS)  # no config: the given model still
    assert _lengths(collect_pairs(ReportSources(pairs=alone, model=given)))[0] == (
        "tokens (given_tok tokenizer)"
    )


def test_lengths_are_counted_with_the_pairs_config_model_then_the_pairs_own(tmp_path):
    config_model, record_model = _tokenizer(tmp_path / "cfg_tok"), _tokenizer(tmp_path / "rec_tok")
    records = [PairRecord(**{**p.to_dict(), "model": record_model}) for p in PAIRS]
    plain = _write_pairs(tmp_path / "a" / "pairs.jsonl", PAIRS, {"model": config_model})
    assert _lengths(collect_pairs(ReportSources(pairs=plain))) == (
        "tokens (cfg_tok tokenizer)",
        CHARACTERS,
    )
    both = _write_pairs(tmp_path / "b" / "pairs.jsonl", records, {"model": config_model})
    assert collect_pairs(ReportSources(pairs=both))["length_unit"] == "tokens (cfg_tok tokenizer)"
    own = _write_pairs(tmp_path / "c" / "pairs.jsonl", records, {"model": ""})
    assert _lengths(collect_pairs(ReportSources(pairs=own))) == (
        "tokens (rec_tok tokenizer)",
        CHARACTERS,
    )


# ----------------------------------------------------------------------------- the audit's numbers


def _row(kind: str, chosen: int, rejected: int, **fields) -> dict:
    row = {"kind": kind, "cl": chosen, "rl": rejected, "v": "", "cf": "stop", "rf": "stop"}
    row |= {"ratio": round(chosen / rejected, 3) if rejected else None, "nd": False}
    return row | fields


EMPTY_KIND = {
    "n": 0,
    "kept": 0,
    "dropped": {"identical": 0, "empty": 0, "truncated": 0, "refusal": 0, "near_duplicate": 0},
    "median_chosen": 0,
    "median_rejected": 0,
    "median_ratio": None,
    "truncated": 0,
    "near_duplicate": 0,
}


def test_the_audit_of_no_pairs_is_zeros_without_warnings():
    assert audit({"rows": []}) == {
        "n": 0,
        "kinds": [],
        "by_kind": {"all": EMPTY_KIND},
        "warnings": [],
    }


def test_a_kind_without_any_rejected_text_has_no_median_ratio():
    summary = audit({"rows": [_row("bad_prompt", 4, 0, v="empty"), _row("imported", 2, 1)]})
    assert summary["by_kind"]["bad_prompt"]["median_ratio"] is None
    assert summary["by_kind"]["bad_prompt"]["dropped"]["empty"] == 1
    assert summary["by_kind"]["all"]["median_ratio"] == 2.0
    assert summary["kinds"] == ["bad_prompt", "imported"]


LONGER = (
    "The chosen answers are systematically longer than the rejected ones (median chosen/rejected "
    "length ratio above 1.5: {where}). DPO can learn 'longer is better' from such pairs instead "
    "of 'faithful is better'; compare lengths of the trained model's answers with the base "
    "model's, or filter or balance pairs by length."
)


def test_the_length_warning_names_every_kind_above_the_threshold_in_its_words():
    rows = [_row("bad_prompt", 4, 2), _row("corrupt_lowres", 6, 2), _row("corrupt_color", 3, 2)]
    summary = audit({"rows": rows})
    # corrupt_color at exactly 1.5 is not above it; all: median of 2, 3, 1.5.
    assert summary["warnings"] == [
        LONGER.format(where="bad_prompt 2.00×, corrupt_lowres 3.00×, all 2.00×")
    ]


def test_a_median_ratio_of_exactly_the_threshold_is_not_warned_about():
    assert audit({"rows": [_row("bad_prompt", 3, 2)] * 4})["warnings"] == []


TRUNCATED = (
    "{t} of {n} pairs ({share}%) have an answer cut off at the token limit; raise "
    "--max-new-tokens or keep the truncation filter on."
)


def test_the_truncation_warning_is_above_five_percent_with_the_share_in_its_words():
    cut = _row("bad_prompt", 2, 2, rf="length", v="truncated")
    at_five = [cut, *[_row("bad_prompt", 2, 2)] * 19]  # 1 of 20: exactly 5%, not above
    assert audit({"rows": at_five})["warnings"] == []
    above = [cut, _row("bad_prompt", 2, 2, cf="length"), *[_row("bad_prompt", 2, 2)] * 8]
    summary = audit({"rows": above})
    assert summary["warnings"] == [TRUNCATED.format(t=2, n=10, share="20.0")]
    assert summary["by_kind"]["all"]["truncated"] == 2
    # truncated counts a cut-off side; the dropped count only what the verdict says.
    assert summary["by_kind"]["all"]["dropped"]["truncated"] == 1


# ----------------------------------------------------------------------------- results' filing


def test_a_result_that_is_not_an_object_is_refused_naming_it(tmp_path):
    path = tmp_path / "bench" / "pope.json"
    path.parent.mkdir()
    path.write_text("[1, 2]")
    with pytest.raises(
        report.ReportError, match=f"^{re.escape(str(path))}: not a stic bench result$"
    ):
        report._describe_result(path, "bench")


def test_dar_and_data_come_from_the_results_config_when_the_document_lacks_them(tmp_path):
    document = {"benchmark": "pope_random", "accuracy": 0.5}
    path = _result(tmp_path / "bench", "pope", document, {"dar": True, "data": "my/pope.jsonl"})
    described = report._describe_result(path, "bench")
    assert (described["dar"], described["data"]) == (True, "my/pope.jsonl")
    assert described["document"] == document
    # The document's own dar wins over the config's.
    said = _result(tmp_path / "bench", "said", {"dar": False}, {"dar": True})
    assert report._describe_result(said, "bench")["dar"] is False


def test_an_eval_result_is_filed_by_its_data_file_only(tmp_path):
    path = _result(tmp_path / "eval", "r", {"benchmark": "pope_random", "accuracy": 0.5}, {})
    described = report._describe_result(path, "eval")
    assert described["data"] is None and described["document"]["accuracy"] == 0.5
