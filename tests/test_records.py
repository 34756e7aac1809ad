"""corpus.records: one rule for where a document's text sits, used by data build, the trainer and the analysis."""

import datasets
import pytest

from softpick.corpus.records import no_text_field, record_text, text_field
from softpick.train.config import ConfigError
from softpick.train.data import _text_column


def test_text_is_preferred_to_content_and_only_strings_count():
    assert text_field(["id", "content", "text"]) == "text" and text_field(["content"]) == "content"
    assert text_field(["body"]) is None
    assert record_text("plain") == "plain"
    assert record_text({"content": "c", "text": "t"}) == "t" and record_text({"content": "c"}) == "c"
    assert record_text({"text": None, "content": "c"}) is None  # the text field decides, even when empty
    assert record_text({"other": 1}) is None and record_text(3) is None
    assert no_text_field("x.parquet", ["a", "b"]) == "x.parquet has no 'text' or 'content' column (columns: ['a', 'b'])."


def test_trainer_datasets_follow_the_same_rule():
    ds = datasets.Dataset.from_dict({"id": [1, 2], "content": ["a", "b"]})
    assert _text_column(ds, "d").column_names == ["text"] and _text_column(ds, "d")["text"] == ["a", "b"]
    with pytest.raises(ConfigError, match=r"dataset 'd' has no 'text' or 'content' column \(columns: \['id'\]\)"):
        _text_column(datasets.Dataset.from_dict({"id": [1]}), "d")
