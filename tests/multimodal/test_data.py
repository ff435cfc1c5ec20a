"""LLaVA data: the llava format's image tokens (where they go, that they count against max_length and are never
trained), errors that name the record for missing, corrupt or surplus images (or skipping them when configured),
padding to square with the mean colour, batches with pixel values, and grouping by modality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from xtune.config.schema import ModelSettings, VisionSettings, validate_config
from xtune.data.dataset import build_training_data
from xtune.data.encode import IGNORE_INDEX
from xtune.data.packing import Row, epoch_batches, group_lengths
from xtune.errors import DataError
from xtune.models.llava import image_processor, image_token_count, multimodal_tokenizer
from xtune.multimodal.data import BAD_IMAGE, IMAGE_TOKEN, ImageCollator, map_fn_of
from xtune.templates import get_template

VISION = {"path": "builtin:tiny-clip", "random_init": True}
TOKENS = 16  # tiny-clip: 32x32 images, 8x8 patches, CLS dropped


@pytest.fixture(scope="module")
def tokenizer():
    return multimodal_tokenizer(ModelSettings(path="builtin:tiny-llama"))


@pytest.fixture
def folder(tmp_path) -> Path:
    Image.new("RGB", (32, 32), (200, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (32, 32), (0, 0, 200)).save(tmp_path / "blue.png")
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    png = (tmp_path / "red.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    return tmp_path


def record(id_: str, image, question: str = "<image>\nWhat colour?", answer: str = "red") -> dict:
    out = {"id": id_, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        out["image"] = image
    return out


def config(folder: Path, records: list[dict], **data):
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    dataset = {"path": str(path), "format": "llava", "image_folder": str(folder)}
    raw = {
        "model": {"path": "builtin:tiny-llama", "method": "frozen", "vision": VISION},
        "data": {"datasets": [dataset], "template": "qwen_chat", "max_length": 128, "cache": False, **data},
    }
    return validate_config(raw)


def build(cfg, tokenizer):
    return build_training_data(cfg.data, tokenizer, get_template("qwen_chat"), 0, map_fn_of(cfg, TOKENS))


def _vision() -> VisionSettings:
    return VisionSettings(**VISION)


def test_image_token_count_follows_the_vision_config():
    assert image_token_count(_vision()) == TOKENS  # 4x4 patches; CLS dropped by the default strategy
    assert image_token_count(VisionSettings(**VISION, select_strategy="full")) == TOKENS + 1


def test_image_tokens_open_the_first_human_turn_and_are_never_trained(folder, tokenizer):
    cfg = config(folder, [record("a", "red.png", question="What colour is this? <image>")])
    row = build(cfg, tokenizer).rows[0]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    positions = [i for i, token in enumerate(row.input_ids) if token == image_id]
    assert len(positions) == TOKENS and positions == list(range(positions[0], positions[0] + TOKENS))
    text = tokenizer.decode(row.input_ids)
    assert f"<|im_start|>user\n{IMAGE_TOKEN * TOKENS}\nWhat colour is this?<|im_end|>" in text
    trained = [token for token, label in zip(row.input_ids, row.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "red<|im_end|>"  # the answer and its end of turn, nothing else
    assert row.images == [str(folder / "red.png")]


def test_image_tokens_count_against_max_length(folder, tokenizer):
    records = [record("a", "red.png")]
    full = build(config(folder, records), tokenizer).rows[0]
    assert len(full) > TOKENS
    # Just enough room for the prompt with its image tokens, none for the answer: nothing left to train.
    cut = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    with pytest.raises(DataError, match="data.jsonl: no record has anything to train"):
        build(config(folder, records, max_length=cut), tokenizer)
    text_only = build(config(folder, [record("b", None, question="What colour?")], max_length=cut), tokenizer)
    # the same record without an image fits: its length is the text alone (no image tokens, no newline after them)
    assert len(text_only.rows[0]) == len(full) - TOKENS - 1 < cut


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("missing.png", r"record 'bad': image '.*missing.png' does not exist"),
        ("garbage.png", r"record 'bad': image '.*garbage.png' cannot be read as an image"),
        ("truncated.png", r"record 'bad': image '.*truncated.png' cannot be read as an image"),
    ],
)
def test_bad_images_name_the_record(folder, tokenizer, image, message):
    cfg = config(folder, [record("ok", "red.png"), record("bad", image)])
    with pytest.raises(DataError, match=message) as error:
        build(cfg, tokenizer)
    assert f"{folder / 'data.jsonl'}:2:" in str(error.value)  # file and line of the record
    assert "skip_bad_images" in str(error.value)  # and how to go on without it


def test_more_markers_than_images_names_the_record(folder, tokenizer):
    cfg = config(folder, [record("two", "red.png", question="<image> and <image>: same colour?")])
    with pytest.raises(DataError, match=r"data.jsonl:1: record 'two' has 2 <image> markers but 1 image"):
        build(cfg, tokenizer)
    cfg = config(folder, [record("none", None)])  # a marker and no image at all
    with pytest.raises(DataError, match=r"record 'none' has 1 <image> markers but 0 image"):
        build(cfg, tokenizer)


def test_bad_images_are_skipped_and_counted_when_configured(folder, tokenizer):
    records = [record("ok", "red.png"), record("m", "missing.png"), record("g", "garbage.png"), record("b", "blue.png")]
    data = build(config(folder, records, skip_bad_images=True), tokenizer)
    assert data.num_samples == 2
    assert data.dropped[BAD_IMAGE] == 2
    assert f"2 dropped ({BAD_IMAGE})" in data.summary()
    # surplus markers are a broken record, not a bad image: never skipped
    with pytest.raises(DataError, match="markers"):
        build(config(folder, [record("x", "red.png", question="<image><image>")], skip_bad_images=True), tokenizer)


def test_cache_keeps_the_images(folder, tokenizer, tmp_path_factory):
    records = [record("a", "red.png"), record("b", None, question="Hi")]
    cfg = config(folder, records, cache=True, cache_dir=str(tmp_path_factory.mktemp("cache")))
    first, second = build(cfg, tokenizer), build(cfg, tokenizer)
    assert second.stats[cfg.data.datasets[0].path].from_cache
    assert [r.images for r in second.rows] == [r.images for r in first.rows] == [[str(folder / "red.png")], []]


def test_pad_to_square_uses_the_mean_colour():
    """A wide red image padded to square: the bands above and below get the processor's mean colour, which
    normalises to (almost) zero; unpadded, the red fills the whole frame after resizing and cropping."""
    wide = Image.new("RGB", (64, 32), (255, 0, 0))
    padded = image_processor(_vision(), pad_to_square=True)([wide], return_tensors="pt")["pixel_values"][0]
    plain = image_processor(_vision(), pad_to_square=False)([wide], return_tensors="pt")["pixel_values"][0]
    assert padded.shape == plain.shape == (3, 32, 32)
    assert padded[:, :6].abs().max() < 0.02 and padded[:, -6:].abs().max() < 0.02  # mean colour bands
    red = plain[:, 16, 16]
    torch.testing.assert_close(padded[:, 16, 16], red)  # the image itself, in the middle band
    torch.testing.assert_close(plain[:, 0, 0], red)


def test_collator_adds_pixel_values_in_token_order(folder, tokenizer):
    cfg = config(folder, [record("a", "red.png"), record("b", None, question="Hi"), record("c", "blue.png")])
    rows = build(cfg, tokenizer).rows
    collate = ImageCollator(image_processor(_vision(), False), tokenizer.pad_token_id)
    batch = collate(rows)
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["pixel_values"][0, 0, 0, 0] > batch["pixel_values"][1, 0, 0, 0]  # red first, then blue
    assert "pixel_values" not in collate([r for r in rows if not r.images])


def test_group_by_modality_length():
    """With images among the rows, a batch holds image rows or text rows, not both (LLaVA's modality length);
    text-only data keeps plain lengths."""
    rows = [Row(input_ids=[0] * n, images=["x"] if n % 2 else []) for n in range(10, 42)]
    lengths = group_lengths(rows)
    assert [length < 0 for length in lengths] == [not r.images for r in rows]
    for batch in epoch_batches(lengths, 4, seed=0, epoch=0, shuffle=True, group_by_length=True):
        assert len({bool(rows[i].images) for i in batch}) == 1
    assert group_lengths([Row(input_ids=[0] * 3)]) == [3]


def test_log_dataset_shows_where_the_image_tokens_sit(folder, tokenizer):
    from rich.console import Console

    from xtune.data.preview import log_dataset
    from xtune.multimodal.train import LlavaTask
    from xtune.train.distributed import World

    cfg = config(folder, [record("a", "red.png")])
    task = LlavaTask(cfg, folder, World())
    console = Console(record=True, width=200)
    log_dataset(cfg, tokenizer, console, map_fn_of=task.map_fn_of, describe=task.describe_sample)
    out = console.export_text()
    assert f"images: {folder / 'red.png'}; {TOKENS} image tokens at " in out
    assert f"<|im_start|>user\n<image>x{TOKENS}\nWhat colour?" in out
