"""`xtune score`: a trained reward model's scores for the two replies of each preference pair in a file, and the
share of pairs it ranks the chosen reply above the rejected one (pairwise accuracy)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForSequenceClassification

from xtune.config.schema import CONFIG_FILE, DatasetSettings, DataSettings
from xtune.data.dataset import encode_records
from xtune.data.packing import collate, single_rows
from xtune.errors import ConfigError
from xtune.models.load import load_tokenizer
from xtune.templates import resolve_template
from xtune.train.objectives import sequence_scores


def score_pairs(model_dir: str, data: str, fmt: str = "preference") -> Iterator[tuple[int, float, float]]:
    """(record index, chosen score, rejected score) for each pair of `data`, encoded with the template and
    max_length the model was trained with (its xtune_config.yaml)."""
    directory = Path(model_dir)
    config_file = directory / CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(f"{directory} has no {CONFIG_FILE}: score a final/ directory that xtune trained")
    trained = yaml.safe_load(config_file.read_text(encoding="utf-8"))["data"]
    model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True).eval()
    tokenizer = load_tokenizer(str(directory))
    dataset = DatasetSettings(path=data, format=fmt)
    settings = DataSettings(
        datasets=[dataset], template=trained["template"], max_length=trained["max_length"], cache=False
    )
    template = resolve_template(settings.template, tokenizer)
    with torch.no_grad():
        for index, pair in encode_records(dataset, settings, tokenizer, template):
            if not pair.parts:
                raise ConfigError(f"{data}: format {fmt!r} gives single conversations; score needs preference pairs")
            chosen, rejected = sequence_scores(model, collate(single_rows([pair]), tokenizer.pad_token_id)).tolist()
            yield index, chosen, rejected
