"""LLaVA data: records in the LLaVA JSON format -> conversations whose image markers are expanded into image
tokens, and batches that carry the images' pixel values.

The text part goes through xtune's one template/encode path: each image becomes `image_tokens` copies of the
`<image>` token in the rendered text before tokenization, so image tokens count against `max_length`, are never
trained (they sit in a user turn) and appear exactly where the model's image features will replace them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from transformers import PreTrainedTokenizerBase
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from xtune.config.schema import Config, DatasetSettings
from xtune.data.formats import MapFn, RecordError, get_map_fn, sharegpt
from xtune.data.packing import Row, collate
from xtune.errors import DataError
from xtune.models.llava import IMAGE_TOKEN

BAD_IMAGE = "missing or unreadable image"


def image_prompt(content: str, image_tokens: int, n_images: int = 1) -> str:
    """A user turn with its images in front, one run of image tokens per image (LLaVA puts them first)."""
    return (IMAGE_TOKEN * image_tokens + "\n") * n_images + content.replace(IMAGE_TOKEN, "").strip()


@dataclass(frozen=True)
class LlavaFormat:
    """{"id", "image": path | [paths], "conversations": [{"from": "human"|"gpt", "value"}]} -> a conversation
    with the images at the start of the first human turn. Records without "image" are text-only samples.
    A dataclass, so its settings are part of the tokenized-data cache key."""

    image_folder: str | None
    image_tokens: int
    skip_bad_images: bool = False

    def __call__(self, record: dict) -> dict:
        sample = sharegpt(record)
        files = record.get("image") or []
        files = [files] if isinstance(files, str) else files
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise RecordError(f"record {record.get('id')!r}: 'image' must be a path or a list of paths", "image")
        messages = sample["messages"]
        markers = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
        if markers > len(files):
            raise RecordError(
                f"record {record.get('id')!r} has {markers} {IMAGE_TOKEN} markers but {len(files)} image(s); "
                f"remove the extra markers or add the images",
                "conversations",
            )
        paths = [self.check(record, f) for f in files]
        if paths:
            first_user = next((m for m in messages if m["role"] == "user"), None)
            if first_user is None:
                raise RecordError(f"record {record.get('id')!r} has an image but no human turn", "conversations")
            for message in messages:
                message["content"] = message["content"].replace(IMAGE_TOKEN, "")
            first_user["content"] = image_prompt(first_user["content"], self.image_tokens, len(paths))
        return {"messages": messages, "images": paths}

    def check(self, record: dict, file: str) -> str:
        """The image's path; the file must exist and read as an image (PIL verify: headers and, for PNG, the
        checksums of every chunk, without decoding pixels)."""
        path = Path(self.image_folder or ".").expanduser() / file
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            reason = "does not exist" if not path.exists() else f"cannot be read as an image ({e})"
            raise RecordError(
                f"record {record.get('id')!r}: image {str(path)!r} {reason}; fix data.datasets[].image_folder or "
                "the record, or set data.skip_bad_images: true to skip such records",
                "image",
                skip_reason=BAD_IMAGE if self.skip_bad_images else None,
            ) from None
        return str(path)


def map_fn_of(cfg: Config, image_tokens: int):
    """The map function for each dataset: `llava` gets the image settings; other formats are text-only."""

    def of(dataset: DatasetSettings) -> MapFn:
        if dataset.format != "llava":
            return get_map_fn(dataset.format)
        return LlavaFormat(dataset.image_folder, image_tokens, cfg.data.skip_bad_images)

    return of


def load_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"image {path!r} cannot be decoded ({e}); replace it, or remove its record") from None


@dataclass
class ImageCollator:
    """Batches of rows plus `pixel_values`: the images of every row, in the order of their image tokens."""

    image_processor: LlavaImageProcessorPil
    pad_token_id: int

    def __call__(self, rows: Sequence[Row]) -> dict[str, torch.Tensor]:
        batch = collate(rows, self.pad_token_id)
        paths = [path for row in rows for path in row.images]
        if paths:
            batch["pixel_values"] = self.pixel_values([load_image(p) for p in paths])
        return batch

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        return self.image_processor(images, return_tensors="pt")["pixel_values"]


def image_token_runs(ids: Sequence[int], image_token_id: int) -> list[tuple[int, int]]:
    """(start, end) positions of each run of image tokens: where the image features go."""
    runs, start = [], None
    for i, token in enumerate([*ids, None]):
        if token == image_token_id and start is None:
            start = i
        elif token != image_token_id and start is not None:
            runs.append((start, i))
            start = None
    return runs


def describe_image_tokens(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> str:
    """'16 image tokens at 3-18' for log-dataset, '' for a text-only sample."""
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    runs = image_token_runs(ids, image_token_id)
    return ", ".join(f"{end - start} image tokens at {start}-{end - 1}" for start, end in runs)
