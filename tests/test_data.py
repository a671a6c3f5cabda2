"""Data: readers for class folders and tables, clear errors that point at the file, splits, and images."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from PIL import Image

from graftune.config import DataConfig, SplitConfig
from graftune.data.images import center_crop, image_tensor, open_rgb, random_resized_crop, to_tensor
from graftune.data.readers import Example, read_examples, split_folders
from graftune.data.record import record
from graftune.data.splits import Splits, check_labels, read_splits, stratified_split
from graftune.errors import InputWarning, UserError
from graftune.preprocessing import ImagePreprocess


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


def user_error(*args: object, **kwargs: object) -> str:
    with pytest.raises(UserError) as info:
        read_examples(*args, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


# --- class folders -----------------------------------------------------------------------------------------


def test_text_class_folders(tmp_path: Path) -> None:
    helpers.write_text(tmp_path / "sport" / "a.txt", "The striker scored twice.")
    helpers.write_text(tmp_path / "sport" / "nested" / "b.txt", "A late winner at Wembley.")
    helpers.write_text(tmp_path / "tech" / "c.txt", "Chips got faster again.\n")
    helpers.write_text(tmp_path / "tech" / "notes.md", "not an example")
    helpers.write_text(tmp_path / "tech" / ".hidden.txt", "not an example either")
    helpers.write_text(tmp_path / ".cache" / "x.txt", "ignored folder")
    with pytest.warns(InputWarning, match=r"tech: ignored 1 \.md file"):
        examples = read_examples(tmp_path, "text")
    assert [(e.label, e.input) for e in examples] == [
        ("sport", "The striker scored twice."), ("sport", "A late winner at Wembley."),
        ("tech", "Chips got faster again.\n")]
    assert examples[0].where == str(tmp_path / "sport" / "a.txt")


def test_image_class_folders(tmp_path: Path) -> None:
    helpers.write_png(tmp_path / "cat" / "1.png")
    helpers.write_png(tmp_path / "cat" / "2.PNG", (0, 0, 0))
    (tmp_path / "dog").mkdir()
    Image.new("L", (8, 8), 128).save(tmp_path / "dog" / "3.jpg")
    helpers.write_text(tmp_path / "dog" / "readme.txt", "not an image")
    with pytest.warns(InputWarning, match=r"dog: ignored 1 \.txt file"):
        examples = read_examples(tmp_path, "image")
    assert [(Path(e.input).name, e.label) for e in examples] == [("1.png", "cat"), ("2.PNG", "cat"), ("3.jpg", "dog")]
    assert all(e.input == e.where for e in examples)


def test_empty_text_file_names_the_file(tmp_path: Path) -> None:
    helpers.write_text(tmp_path / "a" / "ok.txt", "fine")
    empty = helpers.write_text(tmp_path / "b" / "empty.txt", "  \n\t\n")
    message = user_error(tmp_path, "text")
    assert message.startswith(f"{empty}:") and "empty text" in message


def test_non_utf8_text_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "a" / "latin1.txt"
    bad.parent.mkdir()
    bad.write_bytes("caf\xe9".encode("latin-1"))
    message = user_error(tmp_path, "text")
    assert message.startswith(f"{bad}:") and "UTF-8" in message


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    helpers.write_png(tmp_path / "cat" / "ok.png")
    corrupt = tmp_path / "cat" / "broken.png"
    corrupt.write_bytes(b"this is not a PNG at all" * 10)
    message = user_error(tmp_path, "image")
    assert message.startswith(f"{corrupt}:") and "cannot read image broken.png" in message


def test_missing_path_and_empty_roots(tmp_path: Path) -> None:
    assert "data not found" in user_error(tmp_path / "absent", "text")
    assert "no class folders" in user_error(tmp_path, "text")
    (tmp_path / "label").mkdir()
    assert "no examples found" in user_error(tmp_path, "text")
    helpers.write_text(tmp_path / "data.parquet", "x")
    assert "unknown data format '.parquet'" in user_error(tmp_path / "data.parquet", "text")


# --- tables ------------------------------------------------------------------------------------------------


def test_csv_with_guessed_and_named_columns(tmp_path: Path) -> None:
    path = helpers.write_text(tmp_path / "data.csv", 'text,label\nhello there,greet\n"bye, then",leave\n')
    examples = read_examples(path, "text")
    assert examples == [Example("hello there", "greet", f"{path}:2"), Example("bye, then", "leave", f"{path}:3")]
    path = helpers.write_text(tmp_path / "named.csv", "body,topic\nshares fell, business \n")
    assert read_examples(path, "text", input_column="body", label_column="topic") == [
        Example("shares fell", "business", f"{path}:2")]


def test_tsv(tmp_path: Path) -> None:
    path = helpers.write_text(tmp_path / "data.tsv", "sentence\tlabel\na, b and c\tx\n")
    assert read_examples(path, "text") == [Example("a, b and c", "x", f"{path}:2")]


def test_jsonl_with_columns_and_blank_lines(tmp_path: Path) -> None:
    rows = [{"content": "first", "label": 1}, {"content": "second", "label": "b", "extra": None}]
    path = helpers.write_text(tmp_path / "data.jsonl", json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    assert read_examples(path, "text") == [Example("first", "1", f"{path}:1"), Example("second", "b", f"{path}:3")]


def test_image_table_resolves_paths_relative_to_the_table(tmp_path: Path) -> None:
    helpers.write_png(tmp_path / "imgs" / "a.png")
    absolute = helpers.write_png(tmp_path / "elsewhere" / "b.png")
    path = helpers.write_text(tmp_path / "data.csv", f"path,label\nimgs/a.png,x\n{absolute},y\n")
    examples = read_examples(path, "image")
    assert [e.input for e in examples] == [str(tmp_path / "imgs" / "a.png"), str(absolute)]
    assert [e.label for e in examples] == ["x", "y"]


def test_image_table_with_a_corrupt_image_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG but truncated garbage")
    path = helpers.write_text(tmp_path / "data.csv", "image,label\nbad.png,x\n")
    message = user_error(path, "image")
    assert message.startswith(f"{path}:2:") and "bad.png" in message


def test_unknown_column_suggests_the_closest(tmp_path: Path) -> None:
    path = helpers.write_text(tmp_path / "data.csv", "text,labels\nhi,a\n")
    message = user_error(path, "text")
    assert message.startswith(f"{path}:2:")
    assert "no column 'label'" in message and "Did you mean 'labels'?" in message
    message = user_error(path, "text", input_column="txt", label_column="labels")
    assert "no column 'txt'" in message and "Did you mean 'text'?" in message


def test_input_column_cannot_be_guessed(tmp_path: Path) -> None:
    path = helpers.write_text(tmp_path / "data.csv", "words,label\nhi,a\n")
    message = user_error(path, "text")
    assert "cannot tell which column holds the texts" in message and "words" in message


def test_bad_json_line_reports_path_and_line(tmp_path: Path) -> None:
    path = helpers.write_text(tmp_path / "data.jsonl", '{"text": "ok", "label": "a"}\n{"text": "oops", label: 1}\n')
    message = user_error(path, "text")
    assert message.startswith(f"{path}:2:") and "not valid JSON" in message
    path = helpers.write_text(tmp_path / "list.jsonl", '["text", "label"]\n')
    assert user_error(path, "text").startswith(f"{path}:1: expected a JSON object")


def test_table_cell_errors_point_at_the_line(tmp_path: Path) -> None:
    path = helpers.write_text(tmp_path / "data.csv", "text,label\nfine,a\n   ,b\n")
    assert user_error(path, "text").startswith(f"{path}:3: empty text")
    path = helpers.write_text(tmp_path / "nolabel.csv", "text,label\nfine,a\nalso fine,\n")
    assert user_error(path, "text").startswith(f"{path}:3: empty label")
    path = helpers.write_text(tmp_path / "wide.csv", "text,label\nfine,a,surplus\n")
    assert user_error(path, "text").startswith(f"{path}:2: more fields than the header")
    path = helpers.write_text(tmp_path / "empty.csv", "")
    assert "empty CSV file" in user_error(path, "text")


# --- the user's own split ----------------------------------------------------------------------------------


def test_split_folders(tmp_path: Path) -> None:
    for name in ("train", "val", "test"):
        (tmp_path / "a" / name / "x").mkdir(parents=True)
    assert split_folders(tmp_path / "a") == {"train": tmp_path / "a" / "train", "val": tmp_path / "a" / "val",
                                             "test": tmp_path / "a" / "test"}
    (tmp_path / "b" / "train").mkdir(parents=True)
    (tmp_path / "b" / "Validation").mkdir()
    (tmp_path / "b" / ".git").mkdir()
    assert split_folders(tmp_path / "b") == {"train": tmp_path / "b" / "train", "val": tmp_path / "b" / "Validation"}


def test_class_folders_are_not_split_folders(tmp_path: Path) -> None:
    (tmp_path / "a" / "train").mkdir(parents=True)
    (tmp_path / "a" / "cats").mkdir()
    assert split_folders(tmp_path / "a") is None  # `train` is then a class name
    (tmp_path / "b" / "val").mkdir(parents=True)
    assert split_folders(tmp_path / "b") is None  # no train
    assert split_folders(helpers.write_text(tmp_path / "f.csv", "x")) is None


# --- stratified splits -------------------------------------------------------------------------------------


def examples_of(counts: dict[str, int]) -> list[Example]:
    return [Example(f"{label} {i}", label, f"{label}/{i}.txt") for label, n in counts.items() for i in range(n)]


def test_stratified_split_keeps_every_class_in_every_split() -> None:
    examples = examples_of({"a": 20, "b": 20, "c": 20})
    splits = stratified_split(examples, 0.2, 0.2, seed=0)
    for part in (splits.train, splits.val, splits.test):
        assert {e.label for e in part} == {"a", "b", "c"}
    assert (len(splits.train), len(splits.val), len(splits.test)) == (36, 12, 12)
    everything = [e.where for part in (splits.train, splits.val, splits.test) for e in part]
    assert sorted(everything) == sorted(e.where for e in examples)
    assert splits.labels() == ["a", "b", "c"]


def test_stratified_split_is_reproducible_per_seed() -> None:
    examples = examples_of({"a": 15, "b": 15})
    first = stratified_split(examples, 0.2, 0.2, seed=3)
    again = stratified_split(examples, 0.2, 0.2, seed=3)
    other = stratified_split(examples, 0.2, 0.2, seed=4)
    saved = record(first, "text", 3, {})
    assert saved == record(again, "text", 3, {})
    assert saved["val"] != record(other, "text", 4, {})["val"]
    assert saved["seed"] == 3 and saved["train"]["count"] == len(first.train) == len(saved["train"]["digests"])


def test_zero_fractions_leave_a_split_empty() -> None:
    splits = stratified_split(examples_of({"a": 5, "b": 5}), 0.2, 0.0, seed=0)
    assert splits.test == [] and len(splits.val) == 2 and len(splits.train) == 8


def test_class_with_too_few_examples_is_named() -> None:
    with pytest.raises(UserError, match=r"class 'rare' has 2 example\(s\).*at least 3"):
        stratified_split(examples_of({"common": 20, "rare": 2}), 0.15, 0.15, seed=0)
    with pytest.raises(UserError, match=r"class 'rare' has 1 example\(s\).*at least 2"):
        stratified_split(examples_of({"common": 20, "rare": 1}), 0.15, 0.0, seed=0)


def test_too_small_to_split_is_a_user_error() -> None:
    with pytest.raises(UserError, match="cannot split 9 examples in 3 classes"):
        stratified_split(examples_of({"a": 3, "b": 3, "c": 3}), 0.15, 0.15, seed=0)


def test_a_class_that_passes_the_minimum_appears_in_every_split() -> None:
    splits = stratified_split(examples_of({"common": 40, "rare": 3}), 0.15, 0.15, seed=0)
    for part in (splits.train, splits.val, splits.test):
        assert "rare" in {e.label for e in part}


def test_check_labels() -> None:
    train = examples_of({"a": 2, "b": 2})
    check_labels(Splits(train, examples_of({"a": 1}), examples_of({"b": 1})), {})
    stranger = Example("x", "zebra", "val.csv:7")
    with pytest.raises(UserError, match=r"^val\.csv:7: label 'zebra' in the val data does not appear"):
        check_labels(Splits(train, [stranger], []), {})
    with pytest.raises(UserError, match="in the test data"):
        check_labels(Splits(train, [], [stranger]), {})
    with pytest.raises(UserError, match=r"^data/train: found 1 class\(es\)"):
        check_labels(Splits(examples_of({"a": 3}), [], []), {"train": "data/train"})


# --- images ------------------------------------------------------------------------------------------------


def test_random_resized_crop_size_and_variety() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    random.seed(0)
    crops = [random_resized_crop(image, 16) for _ in range(4)]
    assert all(c.size == (16, 16) for c in crops)
    assert len({c.tobytes() for c in crops}) > 1
    assert random_resized_crop(Image.new("RGB", (3, 2)), 24).size == (24, 24)


def test_center_crop_size_and_centre() -> None:
    image = Image.new("RGB", (60, 40), (0, 0, 0))
    image.paste((255, 255, 255), (20, 10, 40, 30))  # white centre square
    crop = center_crop(image, 20, crop_pct=1.0)
    assert crop.size == (20, 20)
    assert np.asarray(crop)[10, 10].tolist() == [255, 255, 255]
    assert center_crop(image, 32, crop_pct=0.875).size == (32, 32)
    assert center_crop(Image.new("RGB", (5, 9)), 16, 0.875).size == (16, 16)  # smaller than the target


def test_to_tensor_normalises() -> None:
    preprocess = ImagePreprocess(size=4)
    mean_colour = tuple(round(m * 255) for m in preprocess.mean)
    tensor = to_tensor(Image.new("RGB", (4, 4), mean_colour), preprocess)
    assert tensor.shape == (3, 4, 4) and tensor.dtype == torch.float32
    assert tensor.abs().max() < 0.01
    white = to_tensor(Image.new("RGB", (2, 2), (255, 255, 255)), preprocess)
    expected = [(1 - m) / s for m, s in zip(preprocess.mean, preprocess.std, strict=True)]
    assert torch.allclose(white[:, 0, 0], torch.tensor(expected))


def test_image_tensor_reads_files(tmp_path: Path) -> None:
    gray = tmp_path / "gray.png"
    Image.new("L", (40, 30), 100).save(gray)
    preprocess = ImagePreprocess(size=24)
    assert image_tensor(str(gray), preprocess, augment=False).shape == (3, 24, 24)
    assert image_tensor(str(gray), preprocess, augment=True).shape == (3, 24, 24)
    assert open_rgb(str(gray)).mode == "RGB"
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"nope")
    with pytest.raises(UserError, match="cannot decode image"):
        open_rgb(str(corrupt))


# --- inputs read faithfully or refused ----------------------------------------------------------------------


def test_sixteen_bit_float_and_palette_images_keep_their_range(tmp_path: Path) -> None:
    ramp = np.arange(64, dtype=np.float64).reshape(8, 8) / 63  # 0 .. 1
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "float.tiff")
    palette = Image.fromarray((ramp * 255).astype(np.uint8)).convert("P")
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png")
    expected = np.round(ramp * 255)
    for name in ("deep.png", "float.tiff", "palette.png"):
        grey = np.asarray(open_rgb(str(tmp_path / name)), dtype=np.float64)[..., 0]
        assert np.abs(grey - expected).max() <= 1, name  # PIL's own convert("RGB") saturates or truncates these


def test_a_class_folder_without_usable_files_is_an_error(tmp_path: Path) -> None:
    helpers.write_png(tmp_path / "cat" / "1.png")
    helpers.write_text(tmp_path / "dog" / "1.heic", "not decodable here")
    helpers.write_text(tmp_path / "dog" / "2.heic", "not decodable here")
    message = user_error(tmp_path, "image")
    assert str(tmp_path / "dog") in message and "2 .heic" in message and "class 'dog' has no image files" in message


def test_another_text_encoding_is_read_when_named(tmp_path: Path) -> None:
    helpers.write_text(tmp_path / "a" / "ok.txt", "fine")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    assert read_examples(tmp_path, "text", encoding="latin-1")[1].input == "café crème"
    table = tmp_path / "rows.csv"
    table.write_bytes("text,label\ncaf\xe9,x\n".encode("latin-1"))
    with pytest.raises(UserError, match=rf"{table}: not UTF-8 text \(byte 14\).*data\.encoding"):
        read_examples(table, "text")
    assert read_examples(table, "text", encoding="latin-1")[0].input == "café"


def test_a_format_that_does_not_match_the_path(tmp_path: Path) -> None:
    helpers.write_text(tmp_path / "a" / "x.txt", "fine")
    table = helpers.write_text(tmp_path / "rows.csv", "text,label\nhi,a\n")
    with pytest.raises(UserError, match=r"data\.format is 'csv', but this is a folder"):
        read_examples(tmp_path, "text", fmt="csv")
    with pytest.raises(UserError, match=r"data\.format is 'folder', but this is a file"):
        read_examples(table, "text", fmt="folder")


def test_a_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = helpers.write_png(tmp_path / "cat" / "huge.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4,096 pixels: over twice the limit, as a bomb is
    with pytest.raises(UserError, match=f"{image}: huge.png is too large to decode safely"):
        read_examples(tmp_path, "image")
    with pytest.raises(UserError, match=f"{image}: .*Resize the image"):
        open_rgb(str(image))


# --- issue 20: data edges ------------------------------------------------------------------------------------


def test_a_label_that_is_a_list_object_or_fraction_is_refused(tmp_path: Path) -> None:
    """A list label would become a class named "['business']"; 1.0 and 1 would be two classes."""
    path = tmp_path / "news.jsonl"
    for label, fragment in ((["business"], "is a list"), ({"topic": "sport"}, "is an object"),
                            (0.5, "is the number 0.5")):
        path.write_text(json.dumps({"text": "fine", "label": "a"}) + "\n" + json.dumps({"text": "odd", "label": label}))
        message = user_error(path, "text")
        assert f"{path}:2" in message and fragment in message and "one string label" in message, message
        assert ("multi-label classification is not supported" in message) == isinstance(label, list)
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": label}) + "\n" for i, label in enumerate([3, True])))
    assert [e.label for e in read_examples(path, "text")] == ["3", "True"]  # whole numbers and booleans name classes


def test_an_excel_csv_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a byte-order mark, which UTF-8 read as part of the first column's name."""
    path = tmp_path / "excel.csv"
    path.write_bytes("text,label\r\ncafé,a\r\nbar,b\r\n".encode("utf-8-sig"))
    assert [(e.input, e.label) for e in read_examples(path, "text")] == [("café", "a"), ("bar", "b")]
    jsonl = tmp_path / "excel.jsonl"
    jsonl.write_bytes('{"text": "café", "label": "a"}\n'.encode("utf-8-sig"))
    assert read_examples(jsonl, "text")[0].label == "a"


def test_an_empty_class_folder_is_named_in_a_warning(tmp_path: Path) -> None:
    helpers.write_text(tmp_path / "a" / "1.txt", "one")
    helpers.write_text(tmp_path / "b" / "1.txt", "two")
    (tmp_path / "c").mkdir()
    with pytest.warns(InputWarning, match=r"ignored 1 empty class folder\(s\): c\."):
        assert {e.label for e in read_examples(tmp_path, "text")} == {"a", "b"}


def test_a_32_bit_integer_image_keeps_its_range(tmp_path: Path) -> None:
    """A mode-I TIFF holding 0-255 was scaled as 16-bit, so it read as black."""
    ramp = np.arange(64, dtype=np.int32).reshape(8, 8) * 4  # 0 .. 252
    Image.fromarray(ramp).save(tmp_path / "wide.tif")
    Image.fromarray(ramp * 257).save(tmp_path / "sixteen.tif")  # 16-bit values stored in 32 bits
    for name in ("wide.tif", "sixteen.tif"):
        grey = np.asarray(open_rgb(str(tmp_path / name)), dtype=np.float64)[..., 0]
        assert np.abs(grey - ramp).max() <= 1, name


def test_held_out_data_that_is_the_training_data(tmp_path: Path) -> None:
    """Test scores on the training examples say nothing: the same path is refused, a copy is warned about."""
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(8)))
    with pytest.raises(UserError, match=r"data.test \(.*train.csv\) is the training data"):
        read_splits(DataConfig(train=str(train), test=str(tmp_path / "." / "train.csv")), "text")
    copy = tmp_path / "copy.csv"
    copy.write_text(train.read_text())
    with pytest.warns(InputWarning, match=r"8 of 8 test examples are also in the training data .*copy.csv:2"):
        read_splits(DataConfig(train=str(train), test=str(copy)), "text")
    images = helpers.write_colour_folders(tmp_path / "images", per_class=3)
    shutil.copytree(images, tmp_path / "val")
    with pytest.warns(InputWarning, match=r"9 of 9 val examples are also in the training data"):
        read_splits(DataConfig(train=str(images), val=str(tmp_path / "val"), split=SplitConfig(test=0.0)), "image")
