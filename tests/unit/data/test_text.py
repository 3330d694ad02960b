import json

import numpy as np
import pytest
from text_builders import sentiment_frame

from fedsys.config import RunConfig
from fedsys.data import central_test_data, simulated_client_data
from fedsys.data.text import (
    BYTE_VOCAB_SIZE,
    PAD_ID,
    UNKNOWN_ID,
    byte_tokenizer,
    encode_texts,
    load_text_file,
    load_tokenizer,
)
from fedsys.errors import ConfigError, DataError


def _tokenizer_file(tmp_path, **content):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    return str(path)


def test_bytes_are_utf8_plus_one_truncated_and_padded_with_zero():
    ids = encode_texts(["hé", "abcdef"], byte_tokenizer(), max_length=4)

    assert ids.dtype == np.float32 and ids.shape == (2, 4)
    assert ids[0].tolist() == [ord("h") + 1, 0xC3 + 1, 0xA9 + 1, PAD_ID]  # é is two UTF-8 bytes
    assert ids[1].tolist() == [ord(c) + 1 for c in "abcd"]
    assert BYTE_VOCAB_SIZE == 257 and ids.max() < BYTE_VOCAB_SIZE


def test_a_text_encodes_the_same_whatever_the_other_records():
    # no vocabulary or statistic is taken from the records: each is encoded on its own
    alone = encode_texts(["great film"], byte_tokenizer(), max_length=16)
    among = encode_texts(["zzz", "great film", "日本語 " * 9], byte_tokenizer(), max_length=16)

    np.testing.assert_array_equal(alone[0], among[1])


def test_a_public_tokenizer_file_maps_known_tokens_and_marks_the_rest_unknown(tmp_path):
    words = load_tokenizer(
        _tokenizer_file(tmp_path, split="whitespace", tokens=["good", "bad"], lowercase=True)
    )
    chars = load_tokenizer(_tokenizer_file(tmp_path, split="char", tokens=list("abc")))

    assert words.vocab_size == 4 and chars.vocab_size == 5
    assert words.encode("GOOD film bad") == [2, UNKNOWN_ID, 3]
    assert chars.encode("cab!") == [4, 2, 3, UNKNOWN_ID]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"split": "word", "tokens": ["a"]}, "split must be 'char' or 'whitespace', got 'word'"),
        ({"split": "char", "tokens": []}, "tokens must be a non-empty list of non-empty strings"),
        ({"split": "char", "tokens": ["ab"]}, "split 'char' needs single characters, got 'ab'"),
        ({"split": "whitespace", "tokens": ["a", "b", "a"]}, r"lists token\(s\) twice: \['a'\]"),
        ({"split": "char", "tokens": ["a"], "vocab": 3}, "must be a JSON object"),
        (
            {"split": "char", "tokens": ["a"], "lowercase": "yes"},
            "lowercase must be true or false, got 'yes'",
        ),
    ],
)
def test_malformed_tokenizer_files_are_named_one_line(tmp_path, content, message):
    with pytest.raises(DataError, match=message):
        load_tokenizer(_tokenizer_file(tmp_path, **content))


def test_missing_or_invalid_tokenizer_file(tmp_path):
    with pytest.raises(DataError, match="cannot read tokenizer file"):
        load_tokenizer(str(tmp_path / "absent.json"))
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="is not valid JSON"):
        load_tokenizer(str(tmp_path / "bad.json"))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_text_tables_load_as_token_ids_with_integer_labels(tmp_path, suffix):
    frame = sentiment_frame(30, seed=0)
    path = tmp_path / f"reviews{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)

    data = load_text_file(path, text_column="review", label_column="stars", max_length=24)

    assert data.feature_shape == (24,) and data.num_classes == 2
    np.testing.assert_array_equal(data.y, frame["stars"])
    np.testing.assert_array_equal(
        data.x[0], encode_texts([frame["review"][0]], byte_tokenizer(), max_length=24)[0]
    )


def test_bad_text_tables_are_named(tmp_path):
    path = tmp_path / "reviews.csv"
    frame = sentiment_frame(5, seed=0)
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"has no column 'text' \(columns: review, stars\)"):
        load_text_file(path, text_column="text", label_column="stars", max_length=8)
    frame.loc[2, "review"] = None
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="text column 'review' has 1 missing value"):
        load_text_file(path, text_column="review", label_column="stars", max_length=8)
    frame["review"], frame["stars"] = "ok", "five"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="label column 'stars' must hold integer class indices"):
        load_text_file(path, text_column="review", label_column="stars", max_length=8)
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(DataError, match="text data must be a .csv or .parquet file"):
        load_text_file(tmp_path / "x.npz", text_column="review", max_length=8)


def test_a_text_scenario_is_split_and_partitioned_like_any_file(tmp_path):
    path = tmp_path / "reviews.csv"
    sentiment_frame(200, seed=0).to_csv(path, index=False)
    config = RunConfig.from_mapping(
        {
            "dataset": str(path),
            "label-column": "stars",
            "partition": "iid",
            "simulation": {"num-clients": 4},
            "text": {"column": "review", "max-length": 20},
        }
    )

    clients = [simulated_client_data(config, partition_id=i, num_partitions=4) for i in range(4)]

    central = central_test_data(config)
    assert central.feature_shape == (20,) and len(central) == 40
    assert sum(len(c.train) + len(c.test) for c in clients) == 160


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"dataset": "digits", "text": {"column": "t"}}, "text.column applies to a .csv or .parquet dataset"),
        (
            {"dataset": "r.csv", "feature-range": "0,1", "text": {"column": "t"}},
            "feature-range does not apply to text",
        ),
        ({"dataset": "r.csv", "text": {"column": "t", "max-length": 0}}, "text.max-length must be in"),
    ],
)
def test_text_settings_are_checked_when_the_config_is_built(mapping, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(mapping)
