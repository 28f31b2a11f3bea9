"""Sharding (--shard I/N) and `stic merge`: same decisions as an unsharded run, every id once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stic.config import ConfigError, InfuseConfig, PairsConfig, build
from stic.runtime.files import read_json, read_jsonl
from stic.runtime.images import list_images
from stic.runtime.shards import parse_shard, select_shard, shard_of
from stic.stages.infuse import run_infuse
from stic.stages.pairs import run_pairs
from stic.testing import make_images
from stic.tools.merge import MergeError, main, merge_records

DECISIONS = ("id", "prompt", "rejected_kind", "rejected_prompt", "corruption")


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/4", "1", "a/b", "1/0", ""):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_a_bad_shard_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"pairs\.shard"):
        build(
            PairsConfig, {"model": "m", "images": "i", "out": "o.jsonl", "shard": "2/2"}, "pairs."
        )


def test_shards_partition_the_ids():
    ids = [f"img_{i:04d}.png" for i in range(400)]
    parts = [select_shard(ids, f"{i}/3") for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert not set(parts[0]) & set(parts[1]) and not set(parts[1]) & set(parts[2])
    assert all(100 <= len(p) <= 170 for p in parts)
    # Each part keeps the given order, and membership depends on the id alone.
    assert parts[1] == [i for i in ids if shard_of(i, 3) == 1]
    assert select_shard(list(reversed(ids)), "1/3") == list(reversed(parts[1]))
    assert select_shard(ids, None) == ids


def test_merge_records_refuses_overlaps_and_reports_missing():
    a = [{"id": "x"}, {"id": "y"}]
    b = [{"id": "z"}]
    merged, missing = merge_records([a, b], ["a", "b"], ["z", "x", "w", "y"])
    assert [r["id"] for r in merged] == ["z", "x", "y"]
    assert missing == ["w"]
    with pytest.raises(MergeError, match="'y' is in both a and b"):
        merge_records([a, [{"id": "y"}]], ["a", "b"], None)
    with pytest.raises(MergeError, match="not in the expected set"):
        merge_records([a], ["a"], ["x"])


@pytest.fixture(scope="module")
def sharded_pairs(tiny_model_factory, tmp_path_factory):
    """An unsharded pairs run and a 2-way sharded one over the same 8 images."""
    model = str(tiny_model_factory("llava"))
    root = tmp_path_factory.mktemp("shards")
    images = root / "images"
    make_images(images, 8, seed=5)

    def run(out: Path, shard: str | None) -> None:
        run_pairs(
            PairsConfig(
                model=model,
                images=str(images),
                out=str(out),
                shard=shard,
                max_new_tokens=4,
                batch_size=3,
            )
        )

    run(root / "all.jsonl", None)
    run(root / "s0.jsonl", "0/2")
    run(root / "s1.jsonl", "1/2")
    return root, images


@pytest.mark.slow
def test_sharded_runs_make_the_same_decisions_as_an_unsharded_one(sharded_pairs, capsys):
    root, images = sharded_pairs
    s0, s1 = read_jsonl(root / "s0.jsonl"), read_jsonl(root / "s1.jsonl")
    assert s0 and s1 and not {r["id"] for r in s0} & {r["id"] for r in s1}
    code = main(
        [
            "--images",
            str(images),
            "--out",
            str(root / "merged.jsonl"),
            str(root / "s0.jsonl"),
            str(root / "s1.jsonl"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    merged = read_jsonl(root / "merged.jsonl", strict=True)
    unsharded = read_jsonl(root / "all.jsonl")
    assert [r["id"] for r in merged] == list_images(images)
    by_id = {r["id"]: r for r in unsharded}
    for record in merged:
        assert {k: record[k] for k in DECISIONS} == {k: by_id[record["id"]][k] for k in DECISIONS}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["merged"] == 8


@pytest.mark.slow
def test_merge_fails_on_missing_ids_unless_allowed(sharded_pairs, capsys):
    root, images = sharded_pairs
    out = root / "partial.jsonl"
    assert main(["--images", str(images), "--out", str(out), str(root / "s0.jsonl")]) == 1
    assert "ids in no shard" in capsys.readouterr().err
    assert not out.exists()
    assert (
        main(
            ["--images", str(images), "--allow-missing", "--out", str(out), str(root / "s0.jsonl")]
        )
        == 0
    )
    assert len(read_jsonl(out)) == len(read_jsonl(root / "s0.jsonl"))


@pytest.mark.slow
def test_merge_refuses_a_shard_given_twice(sharded_pairs, capsys):
    root, _ = sharded_pairs
    code = main(
        ["--out", str(root / "twice.jsonl"), str(root / "s0.jsonl"), str(root / "s0.jsonl")]
    )
    assert code == 1
    assert "is in both" in capsys.readouterr().err


@pytest.mark.slow
def test_sharded_infuse_merges_back_in_data_order(tiny_model_factory, tmp_path, capsys):
    model = str(tiny_model_factory("llava"))
    images = tmp_path / "images"
    names = [p.name for p in make_images(images, 6, seed=2)]
    data = [
        {
            "id": f"s{i}",
            "image": name,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is it?"},
                {"from": "gpt", "value": "A shape."},
            ],
        }
        for i, name in enumerate(names)
    ]
    data.append(
        {
            "id": "text",
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}],
        }
    )
    (tmp_path / "data.json").write_text(json.dumps(data))
    outs = []
    for i in range(2):
        out = tmp_path / f"infused{i}.json"
        run_infuse(
            InfuseConfig(
                model=model,
                data=str(tmp_path / "data.json"),
                images=str(images),
                out=str(out),
                shard=f"{i}/2",
                max_new_tokens=4,
            )
        )
        outs.append(str(out))
    shard_ids = [[s["id"] for s in read_json(o)] for o in outs]
    assert not set(shard_ids[0]) & set(shard_ids[1])
    merged = tmp_path / "infused.json"
    assert main(["--data", str(tmp_path / "data.json"), "--out", str(merged), *outs]) == 0, (
        capsys.readouterr().err
    )
    rows = read_json(merged)
    assert [r["id"] for r in rows] == [d["id"] for d in data]
    assert all(
        r["conversations"][0]["value"].startswith("<image>\nImage description:\n")
        for r in rows[:-1]
    )
    assert rows[-1] == data[-1]
