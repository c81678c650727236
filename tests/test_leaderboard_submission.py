"""Reading submission files: formats by content, every bad input a clear error naming lines and the fix."""

from __future__ import annotations

import json

import pytest

from lora_wise.leaderboard.submission import MAX_BYTES, SubmissionError, read_submission


def test_csv_and_jsonl_read_the_same_predictions(tmp_path):
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("model_id,prediction\na/x/n1,1\n a/x/n2 , 2.5 \n\na/x/n3,3e1\n")
    jsonl_file = tmp_path / "p.txt"  # the extension does not matter: the content decides
    jsonl_file.write_text("\n".join(json.dumps({"model_id": m, "prediction": v})
                                    for m, v in [("a/x/n1", 1), ("a/x/n2", 2.5), ("a/x/n3", 30.0)]) + "\n")
    parsed_csv, parsed_jsonl = read_submission(csv_file), read_submission(jsonl_file)
    assert parsed_csv.format == "csv" and parsed_jsonl.format == "jsonl"
    assert parsed_csv.predictions == parsed_jsonl.predictions == {"a/x/n1": 1.0, "a/x/n2": 2.5, "a/x/n3": 30.0}
    assert list(parsed_csv.predictions) == ["a/x/n1", "a/x/n2", "a/x/n3"]


def test_bytes_with_bom_and_crlf_and_column_order(tmp_path):
    data = "\ufeffprediction,Model_ID\r\n4,a/x/n1\r\n".encode("utf-8")
    assert read_submission(data).predictions == {"a/x/n1": 4.0}


def test_metadata_columns_must_be_consistent():
    ok = read_submission(b"model_id,prediction,method,config\na,1,m1,mini_low_r8\nb,2,m1,mini_low_r8\n")
    assert ok.metadata == {"method": "m1", "config": "mini_low_r8"}
    with pytest.raises(SubmissionError, match=r"'method' column holds 2 different values.*use one value"):
        read_submission(b"model_id,prediction,method\na,1,m1\nb,2,m2\n")
    jsonl = b'{"model_id": "a", "prediction": 1, "split": "test"}\n{"model_id": "b", "prediction": 2, "split": "train"}\n'
    with pytest.raises(SubmissionError, match="'split' column holds 2 different values"):
        read_submission(jsonl)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b"model_id,prediction\n", "no predictions"),
    (b"id,value\na,1\n", r"no 'model_id' and no 'prediction' columns.*model_id,prediction"),
    (b"model_id,pred\na,1\n", "no 'prediction' column"),
    (b"model_id;prediction\na;1\n", "not comma-separated"),
    (b"model_id,prediction,score\na,1,2\n", "unexpected column 'score'"),
    (b"model_id,prediction,prediction\na,1,2\n", "repeats the 'prediction' column"),
    (b"model_id,prediction\na,1,7\n", "line 2 has 3 fields but the header has 2"),
    (b"model_id,prediction\na,abc\nb,\nc,2\n", r"2 predictions are not a number \(line 2: 'abc', line 3: ''\)"),
    (b"model_id,prediction\na,nan\nb,inf\nc,-Infinity\nd,1e999\n", "4 predictions are NaN or infinite"),
    (b"model_id,prediction\na,0\nb,-3\nc,1\n", r"2 predictions are zero or negative \(line 2: '0', line 3: '-3'\)"),
    (b"model_id,prediction\na,1\nb,2\na,3\n", r"1 model id appears more than once \('a' \(lines 2, 4\)\)"),
    (b"model_id,prediction\n,1\n", "empty or non-text model_id"),
    (b'[{"model_id": "a", "prediction": 1}]', "JSON array"),
    (b'{"model_id": "a", "prediction": 1}\n{"model_id": "b", "prediction": \n', r"line 2 is not valid JSON"),
    (b'{"model_id": "a", "prediction": "1"}\n', "not a number.*a JSON number, not a string"),
    (b'{"model_id": "a", "prediction": true}\n', "not a number"),
    (b'{"model_id": "a", "prediction": NaN}\n', "NaN or infinite"),
    (b'{"model_id": "a", "prediction": 1' + b"0" * 400 + b'}\n', "NaN or infinite"),
    (b'{"model_id": 7, "prediction": 1}\n', "non-text model_id"),
    (b'{"model_id": "a"}\n', "no 'prediction' column"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data, not a CSV or JSONL"),
    (b"model_id,prediction\na,\xff\xfe1\n", "not UTF-8 text"),
])
def test_bad_files_are_clear_errors(content, message):
    with pytest.raises(SubmissionError, match=message):
        read_submission(content, name="upload.csv")


def test_every_problem_is_reported_at_once():
    with pytest.raises(SubmissionError) as info:
        read_submission(b"model_id,prediction\na,x\nb,nan\nc,-1\nd,1\nd,2\n")
    text = str(info.value)
    for part in ("not a number", "NaN or infinite", "zero or negative", "more than once"):
        assert part in text


def test_long_lists_are_shortened():
    rows = "".join(f"m{i},abc\n" for i in range(10))
    with pytest.raises(SubmissionError, match=r"10 predictions are not a number .*\.\.\. \(10 in all\)"):
        read_submission(("model_id,prediction\n" + rows).encode())


def test_size_and_row_limits(tmp_path):
    big = tmp_path / "big.csv"
    with big.open("wb") as f:  # a sparse file: the limit is checked before reading
        f.write(b"model_id,prediction\n")
        f.truncate(MAX_BYTES + 1)
    with pytest.raises(SubmissionError, match=r"52,428,801 bytes, over the limit of 52,428,800"):
        read_submission(big)
    with pytest.raises(SubmissionError, match="over the limit"):
        read_submission(b"model_id,prediction\na,1\nb,2\n", max_bytes=10)
    with pytest.raises(SubmissionError, match="more than 2 rows"):
        read_submission(b"model_id,prediction\na,1\nb,2\nc,3\n", max_rows=2)
    with pytest.raises(SubmissionError, match="more than 1 rows"):
        read_submission(b'{"model_id": "a", "prediction": 1}\n{"model_id": "b", "prediction": 1}\n', max_rows=1)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(SubmissionError, match="no such file"):
        read_submission(tmp_path / "nope.csv")
    with pytest.raises(SubmissionError, match="is not a file"):
        read_submission(tmp_path)
