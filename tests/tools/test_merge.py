"""stic.tools.merge: only shards of one run are joined, and the merge records what it joined.

Shards here are written by hand with the manifests the stages write (write_manifest of a real
stage config), so each provenance case costs no model run; tests/runtime/test_shards.py merges
shards made by real sharded runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stic.config import InfuseConfig, PairsConfig
from stic.data.prompts import GOOD_PROMPT, PLAIN_PROMPTS
from stic.runtime.files import read_json, read_jsonl
from stic.runtime.locks import lock_path, output_lock
from stic.runtime.manifests import manifest_path, read_manifest, write_manifest
from stic.tools.merge import IGNORED_KEYS, main

SAMPLING = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 8, "seed": 42}


def _pair(item_id: str, model: str = "org/model", sampling: dict | None = None) -> dict:
    return {
        "id": item_id,
        "image": item_id,
        "prompt": PLAIN_PROMPTS[0],
        "chosen": "A red square.",
        "rejected": "A blue circle.",
        "rejected_kind": "bad_prompt",
        "chosen_prompt": GOOD_PROMPT,
        "rejected_prompt": "Imagine.",
        "corruption": None,
        "model": model,
        "sampling": SAMPLING if sampling is None else sampling,
    }


def _shard(
    root: Path,
    name: str,
    ids: list[str],
    shard: str | None,
    manifest: bool = True,
    status: str = "complete",
    records: list[dict] | None = None,
    **config,
) -> str:
    out = root / name
    rows = records if records is not None else [_pair(i) for i in ids]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if manifest:
        values = dict(model="org/model", images=str(root / "images"), out=str(out), shard=shard)
        values.update(config)
        write_manifest(out, "pairs", PairsConfig(**values), status, {"written": len(rows)})
    return str(out)


def _merge(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    return tmp_path


def test_shards_of_one_run_merge_and_the_merge_has_a_manifest(root, capsys):
    a = _shard(root, "s0.jsonl", ["a", "b"], "0/2", batch_size=4, device="cpu", limit=10)
    b = _shard(root, "s1.jsonl", ["c"], "1/2", batch_size=2, device="cuda")
    out = root / "merged.jsonl"
    code, stdout, stderr = _merge(capsys, "--out", str(out), a, b)
    assert code == 0, stderr
    assert [r["id"] for r in read_jsonl(out)] == ["a", "b", "c"]
    assert json.loads(stdout)["merged"] == 3
    manifest = read_manifest(out)
    assert manifest["stage"] == "merge" and manifest["status"] == "complete"
    assert manifest["config"] == {
        "shards": [str(Path(a).resolve()), str(Path(b).resolve())],
        "kind": "pairs",
        "out": str(out.resolve()),
        "allow_different": [],
    }
    assert manifest["config_hash"] and manifest["versions"]["python"]
    assert set(manifest["inputs"]) == set(manifest["config"]["shards"])
    assert all(v.startswith("stic:") for v in manifest["inputs"].values())
    assert manifest["summary"] == {"merged": 3, "shards": 2, "missing": 0}
    assert manifest["files"] == ["merged.jsonl"]
    assert manifest["made_by"]["stage"] == "pairs"
    assert not set(IGNORED_KEYS) & set(manifest["made_by"]["config"])
    # A rerun replaces its own earlier merge without --overwrite.
    assert _merge(capsys, "--out", str(out), a, b)[0] == 0


@pytest.mark.parametrize(
    ("change", "keys"),
    [
        ({"model": "org/other"}, ["model 'org/model' vs 'org/other'"]),
        ({"seed": 7}, ["seed 42 vs 7"]),
        ({"temperature": 0.9, "top_p": 0.5}, ["temperature ", "top_p "]),
    ],
)
def test_shards_made_with_different_settings_are_refused_naming_the_keys(
    root, capsys, change, keys
):
    a = _shard(root, "s0.jsonl", ["a"], "0/2")
    b = _shard(root, "s1.jsonl", ["b"], "1/2", **change)
    out = root / "merged.jsonl"
    code, _, stderr = _merge(capsys, "--out", str(out), a, b)
    assert code == 1
    line = stderr.strip()
    assert "\n" not in line
    assert all(key in line for key in keys) and a in line and b in line
    assert not out.exists() and not manifest_path(out).exists()


def test_image_folders_spelled_differently_are_the_same_setting(root, capsys, monkeypatch):
    monkeypatch.chdir(root)
    a = _shard(root, "s0.jsonl", ["a"], "0/2", images="images")
    b = _shard(root, "s1.jsonl", ["b"], "1/2", images=str(root / "images") + "/")
    assert _merge(capsys, "--out", str(root / "m.jsonl"), a, b)[0] == 0


def test_a_shard_of_another_stage_or_not_complete_is_refused(root, capsys):
    a = _shard(root, "s0.jsonl", ["a"], "0/2")
    running = _shard(root, "s1.jsonl", ["b"], "1/2", status="running")
    code, _, stderr = _merge(capsys, "--out", str(root / "m.jsonl"), a, running)
    assert code == 1 and "is not complete" in stderr and running in stderr

    infuse = root / "s2.jsonl"
    infuse.write_text(json.dumps(_pair("c")) + "\n")
    write_manifest(
        infuse,
        "infuse",
        InfuseConfig(model="org/model", data="d.json", images="i", out=str(infuse)),
        "complete",
    )
    code, _, stderr = _merge(capsys, "--out", str(root / "m.jsonl"), a, str(infuse))
    assert code == 1 and "is a infuse output" in stderr


def test_shards_split_different_ways_are_refused(root, capsys):
    a = _shard(root, "s0.jsonl", ["a"], "0/2")
    b = _shard(root, "s1.jsonl", ["b"], "1/3")
    code, _, stderr = _merge(capsys, "--out", str(root / "m.jsonl"), a, b)
    assert code == 1 and "split different ways" in stderr


def test_a_shard_without_manifest_is_merged_when_its_records_agree(root, capsys):
    a = _shard(root, "s0.jsonl", ["a"], "0/2")
    b = _shard(root, "s1.jsonl", ["b"], "1/2", manifest=False)
    out = root / "m.jsonl"
    code, _, stderr = _merge(capsys, "--out", str(out), a, b)
    assert code == 0, stderr
    assert read_manifest(out)["shard_hashes"][str(Path(b).resolve())] is None


@pytest.mark.parametrize(
    ("record", "what"),
    [
        (_pair("b", model="org/other"), 'model "org/model" vs "org/other"'),
        (_pair("b", sampling={**SAMPLING, "seed": 1}), "sampling"),
    ],
)
def test_a_shard_without_manifest_whose_records_differ_is_refused(root, capsys, record, what):
    a = _shard(root, "s0.jsonl", ["a"], "0/2")
    b = _shard(root, "s1.jsonl", [], None, manifest=False, records=[record])
    code, _, stderr = _merge(capsys, "--out", str(root / "m.jsonl"), a, b)
    assert code == 1
    assert what in stderr and "has no manifest" in stderr
    assert stderr.count("\n") == 1


def test_a_shard_appended_to_by_two_runs_is_refused(root, capsys):
    mixed = [_pair("a"), _pair("b", model="org/other")]
    a = _shard(root, "s0.jsonl", [], "0/2", records=mixed)
    b = _shard(root, "s1.jsonl", ["c"], "1/2")
    code, _, stderr = _merge(capsys, "--out", str(root / "m.jsonl"), a, b)
    assert code == 1 and "more than one run" in stderr


def test_out_equal_to_a_shard_is_refused_however_spelled(root, capsys, monkeypatch):
    monkeypatch.chdir(root)
    a = _shard(root, "s0.jsonl", ["a"], "0/2")
    b = _shard(root, "s1.jsonl", ["b"], "1/2")
    before = Path(a).read_bytes()
    code, _, stderr = _merge(capsys, "--out", "./s0.jsonl", a, b)
    assert code == 1 and "is one of the shards" in stderr
    assert Path(a).read_bytes() == before


def test_an_existing_file_stic_did_not_write_is_kept_unless_overwrite(root, capsys):
    a = _shard(root, "s0.jsonl", ["a"], "0/2")
    b = _shard(root, "s1.jsonl", ["b"], "1/2")
    mine = root / "mine.jsonl"
    mine.write_text('{"my": "notes"}\n')
    code, _, stderr = _merge(capsys, "--out", str(mine), a, b)
    assert code == 1 and "stic did not write it" in stderr and "--overwrite" in stderr
    assert mine.read_text() == '{"my": "notes"}\n'
    assert _merge(capsys, "--overwrite", "--out", str(mine), a, b)[0] == 0
    assert [r["id"] for r in read_jsonl(mine)] == ["a", "b"]


def test_a_stage_output_is_not_replaced_by_a_merge_without_overwrite(root, capsys):
    a = _shard(root, "s0.jsonl", ["a"], "0/2")
    b = _shard(root, "s1.jsonl", ["b"], "1/2")
    other = _shard(root, "all.jsonl", ["x"], None)
    code, _, stderr = _merge(capsys, "--out", other, a, b)
    assert code == 1 and "holds a pairs output" in stderr
    assert [r["id"] for r in read_jsonl(other)] == ["x"]


def test_out_must_have_the_suffix_of_its_kind(root, capsys):
    a = _shard(root, "s0.jsonl", ["a"], "0/2")
    code, _, stderr = _merge(capsys, "--out", str(root / "merged"), a)
    assert code == 1 and "merge into a .jsonl file" in stderr
    assert not (root / "merged").exists()


def test_an_infuse_shard_without_manifest_is_refused(root, capsys):
    sample = {
        "id": "s0",
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}],
    }
    shard = root / "infused0.json"
    shard.write_text(json.dumps([sample]))
    code, _, stderr = _merge(capsys, "--out", str(root / "infused.json"), str(shard))
    assert code == 1 and "has no manifest" in stderr and "infuse records" in stderr
    assert not (root / "infused.json").exists()
    write_manifest(
        shard,
        "infuse",
        InfuseConfig(model="org/model", data="d.json", images="i", out=str(shard), shard="0/1"),
        "complete",
    )
    code, _, stderr = _merge(capsys, "--out", str(root / "infused.json"), str(shard))
    assert code == 0, stderr
    assert read_json(root / "infused.json") == [sample]


def test_out_inside_the_images_folder_or_a_folder_is_refused(root, capsys):
    a = _shard(root, "s0.jsonl", ["a"], "0/2")
    out = root / "images" / "merged.jsonl"
    code, _, stderr = _merge(capsys, "--images", str(root / "images"), "--out", str(out), a)
    assert code == 1 and "lies inside the images input" in stderr
    assert list((root / "images").iterdir()) == []  # not even a lock file
    (root / "folder.jsonl").mkdir()
    code, _, stderr = _merge(capsys, "--overwrite", "--out", str(root / "folder.jsonl"), a)
    assert code == 1 and "is a folder" in stderr


def test_a_merge_into_an_output_another_run_holds_is_refused(root, capsys):
    a = _shard(root, "s0.jsonl", ["a"], "0/2")
    b = _shard(root, "s1.jsonl", ["b"], "1/2")
    out = root / "merged.jsonl"
    with output_lock(out, command="stic merge --out merged.jsonl"):
        code, _, stderr = _merge(capsys, "--out", str(out), a, b)
    assert code == 1 and "is being written by another stic run" in stderr
    assert not out.exists()
    assert _merge(capsys, "--out", str(out), a, b)[0] == 0
    assert not lock_path(out).exists()


def test_images_mounted_elsewhere_merge_only_when_allowed(root, capsys):
    (root / "mnt").mkdir()
    a = _shard(root, "s0.jsonl", ["a"], "0/2")
    b = _shard(root, "s1.jsonl", ["b"], "1/2", images=str(root / "mnt"))
    out = root / "merged.jsonl"
    code, _, stderr = _merge(capsys, "--out", str(out), a, b)
    assert code == 1 and "pass --allow-different images" in stderr
    code, _, stderr = _merge(capsys, "--allow-different", "images", "--out", str(out), a, b)
    assert code == 0, stderr
    assert read_manifest(out)["config"]["allow_different"] == ["images"]
    # Only path keys may differ: the settings that decide the records never.
    c = _shard(root, "s2.jsonl", ["c"], "1/2", images=str(root / "mnt"), seed=1)
    code, _, stderr = _merge(capsys, "--allow-different", "images", "--out", str(out), a, c)
    assert code == 1 and "seed 42 vs 1" in stderr


def test_records_of_one_local_model_spelled_two_ways_are_one_model(root, capsys, monkeypatch):
    (root / "model").mkdir()
    monkeypatch.chdir(root)
    records = [_pair("a", model="model"), _pair("b", model=str(root / "model"))]
    a = _shard(root, "s0.jsonl", [], "0/2", records=records, model="model")
    b = _shard(root, "s1.jsonl", [], "1/2", records=[_pair("c", model="./model")], model="./model")
    code, _, stderr = _merge(capsys, "--out", str(root / "m.jsonl"), a, b)
    assert code == 0, stderr
