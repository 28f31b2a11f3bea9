"""What other tools do with stic's outputs, as `stic convert` prints it: TRL's DPOTrainer feeds a
BOS token only where the chat template writes one (checked with TRL's own collator), and the
LLaMA-Factory template to name for a model."""

from __future__ import annotations

import pytest

from stic.data.formats import write_pairs_as
from stic.tools import convert as convert_cli
from tests.tools.test_convert import native_pairs


def _first_tokens(batch) -> list[int]:
    """Each row's first real token (TRL flushes the rows left: padding is at the end)."""
    return [
        int(ids[mask.bool()][0])
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]


@pytest.mark.parametrize("model", ["tiny_llava", "demo", "idefics3"])
def test_trl_collator_feeds_a_bos_only_where_the_template_writes_it(
    model, tmp_path, image_dir, tiny_model_factory
):
    trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
    import datasets
    from transformers import AutoProcessor

    from stic.demo.base_model import shipped_base_path
    from stic.tools.preflight import _leading

    folder = {
        "tiny_llava": lambda: tiny_model_factory("llava"),  # llava-hf's template: no BOS
        "demo": shipped_base_path,  # its template writes <s>
        "idefics3": lambda: tiny_model_factory("idefics3"),  # writes <|im_start|>
    }[model]()
    processor = AutoProcessor.from_pretrained(folder)
    write_pairs_as(native_pairs(), tmp_path / "trl_pairs", "trl", image_dir)
    dataset = datasets.load_from_disk(str(tmp_path / "trl_pairs"))
    collator = trl_dpo.DataCollatorForVisionPreference(processor)
    batch = collator([dict(dataset[0]), dict(dataset[1])])
    bos = processor.tokenizer.bos_token_id
    writes_bos = processor.chat_template.startswith("{{ bos_token }}") or model == "idefics3"
    assert len(_first_tokens(batch)) == 4  # 2 pairs x (chosen, rejected)
    assert all((first == bos) == writes_bos for first in _first_tokens(batch))
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        assert _leading(ids[mask.bool()].tolist(), bos) == int(writes_bos)  # never twice


def test_convert_to_trl_says_what_trl_does_with_the_template(tmp_path, image_dir, capsys):
    write_pairs_as(native_pairs(), tmp_path / "pairs.jsonl", "stic")
    argv = ["--to", "trl", str(tmp_path / "pairs.jsonl"), str(tmp_path / "d.parquet")]
    assert convert_cli.main([*argv, "--images", str(image_dir)]) == 0
    out = capsys.readouterr().out
    assert "tokenizes them without special tokens" in out and "BOS once" in out


@pytest.mark.parametrize(
    ("family", "said"),
    [
        ("llava", "Set `template: llava`"),
        ("qwen2_vl", "Set `template: qwen2_vl`"),
        ("idefics3", "stic knows no LLaMA-Factory template"),
        (None, "Set `template:` in the training YAML to the model's: llava (llava)"),
    ],
)
def test_convert_to_llamafactory_names_the_template(
    family, said, tmp_path, image_dir, tiny_model_factory, capsys
):
    write_pairs_as(native_pairs(), tmp_path / "pairs.jsonl", "stic")
    argv = ["--to", "llamafactory", str(tmp_path / "pairs.jsonl"), str(tmp_path / "lf.json")]
    if family is not None:
        argv += ["--model", str(tiny_model_factory(family))]
    assert convert_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert said in out and "dataset_info.json" in out
    if family == "qwen2_vl":
        assert "a 'qwen2_vl' model" in out


@pytest.mark.parametrize("model", ["demo", "tiny_llava"])
def test_trl_trains_the_demo_model_on_stic_s_own_sequence(
    model, tmp_path, image_dir, tiny_model_factory
):
    # The gap (TRL's chosen log-prob -2.57 vs stic's -0.96) came from TRL feeding the
    # chosen sequence without the BOS stic trains with; the demo model's pair now gives TRL
    # stic's sequence token for token. llava-hf's pair still differs by exactly that BOS.
    trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
    import datasets
    from PIL import Image
    from transformers import AutoProcessor

    from stic.demo.base_model import shipped_base_path
    from stic.modeling.chat import TrainRow, encode_rows, render_segments

    folder = shipped_base_path() if model == "demo" else tiny_model_factory("llava")
    processor = AutoProcessor.from_pretrained(folder)
    pair = native_pairs()[0]
    write_pairs_as([pair], tmp_path / "trl_pairs", "trl", image_dir)
    dataset = datasets.load_from_disk(str(tmp_path / "trl_pairs"))
    batch = trl_dpo.DataCollatorForVisionPreference(processor)([dict(dataset[0])])
    theirs = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()  # the chosen row
    image = Image.open(image_dir / pair.image).convert("RGB")
    row = TrainRow(render_segments(processor, [(pair.prompt, pair.chosen)], True), image)
    ours = encode_rows(processor, [row], 4096)["input_ids"][0].tolist()
    bos = processor.tokenizer.bos_token_id
    if model == "demo":
        assert theirs == ours
    else:
        assert ours[0] == bos and theirs == ours[1:]
