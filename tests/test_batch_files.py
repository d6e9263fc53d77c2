"""`gpt2 batch`'s files, without a model: reading INPUT (rows, defaults, bad rows, bad files,
text and stdin), writing OUTPUT (resume, torn lines, locking, input order), row seeds, and the
`--ray [ADDRESS]` command line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from gpt2cli.batch.output import BadOutput, OrderedRows, Output
from gpt2cli.batch.rows import BadInput, BadRow, Row, RowDefaults, row_seed, scan_input
from gpt2cli.commands.batch import expand_ray_flag
from gpt2cli.types import GenerationConfig, SamplingParams

DEFAULTS = RowDefaults(SamplingParams(temperature=0.7, seed=5), GenerationConfig(max_tokens=9))


def write_lines(path: Path, *lines: object) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def rows_of(path: Path, **scan) -> list[Row | BadRow]:
    source = scan_input(str(path), defaults=DEFAULTS, **scan)
    return list(source.rows(DEFAULTS))


def test_rows_take_flag_defaults_and_override_them(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "in.jsonl",
        {"prompt": "a"},
        {"prompt": "b", "id": "x", "temperature": 0, "top_k": 3, "top_p": 0.5, "seed": 11},
        {"prompt": "c", "max_tokens": 4, "stop": "\n", "samples": 2, "repetition_penalty": 1.2},
        {"prompt": "d", "stop": ["x", "y"]},
    )
    a, b, c, d = rows_of(path)
    assert (a.id, a.line, a.index, a.prompt) == (1, 1, 0, "a")
    assert a.params.temperature == 0.7 and a.config.max_tokens == 9
    assert a.params.seed == row_seed(5, 1)  # derived from --seed and the id
    assert b.id == "x" and b.params == SamplingParams(0, 3, 0.5, 1.0, 11)
    assert c.config == GenerationConfig(max_tokens=4, samples=2, stop=("\n",))
    assert c.params.repetition_penalty == 1.2 and c.params.temperature == 0.7
    assert d.config.stop == ("x", "y")


def test_derived_seeds_depend_on_the_base_and_the_id_only() -> None:
    assert row_seed(0, 7) == row_seed(0, 7)
    assert len({row_seed(0, 7), row_seed(0, "7"), row_seed(1, 7), row_seed(0, 8)}) == 4
    assert all(0 <= row_seed(s, i) < 2**53 for s in range(5) for i in range(50))


@pytest.mark.parametrize(
    "value, message",
    [
        ({"id": "a"}, "prompt: missing"),
        ({"prompt": 3}, "prompt: must be a string"),
        ({"prompt": "x", "temperature": -1}, "temperature: must be a number >= 0"),
        ({"prompt": "x", "temperature": "hot"}, "temperature: must be a number"),
        ({"prompt": "x", "top_k": 2.5}, "top_k: must be an integer"),
        ({"prompt": "x", "top_p": 0}, "top_p: must be in (0, 1]"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens: must be an integer >= 1"),
        ({"prompt": "x", "samples": 65}, "samples: must be an integer in [1, 64]"),
        ({"prompt": "x", "seed": -1}, "seed: must be an integer"),
        ({"prompt": "x", "stop": 5}, "stop: must be a string or a list"),
        ({"prompt": "x", "stop": [""]}, "stop: must not be empty"),
        ({"prompt": "x", "id": [1]}, "id must be a string or an integer"),
        ({"prompt": "x", "id": True}, "id must be a string or an integer"),
        ([1, 2], "a row must be an object, not an array"),
        (None, "a row must be an object, not null"),
    ],
)
def test_a_bad_row_says_why_and_keeps_its_id(tmp_path: Path, value: object, message: str) -> None:
    path = write_lines(tmp_path / "in.jsonl", {"prompt": "ok"}, value)
    ok, bad = rows_of(path)
    assert isinstance(ok, Row) and isinstance(bad, BadRow)
    assert bad.error.startswith("line 2: ") and message in bad.error, bad.error
    given = value.get("id") if isinstance(value, dict) else None
    assert bad.id == (given if isinstance(given, str) else 2)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a"}\n{"prompt": \n', "line 2 is not JSON"),
        ("just some words\n", "line 1 is not JSON"),
        ('{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n', "id 1 is also on line 1"),
        ('{"prompt": "a"}\n{"prompt": "b", "id": 1}\n', "id 1 is also on line 1"),
    ],
)
def test_a_bad_file_is_one_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(content)
    with pytest.raises(BadInput, match=message.replace("(", r"\(")):
        scan_input(str(path), defaults=DEFAULTS)


def test_unreadable_inputs(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such file"):
        scan_input(str(tmp_path / "missing.jsonl"))
    with pytest.raises(BadInput, match="is a directory"):
        scan_input(str(tmp_path))
    (tmp_path / "bin.jsonl").write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(BadInput, match="line 1 is not valid UTF-8"):
        scan_input(str(tmp_path / "bin.jsonl"))


def test_scan_counts_rows_skips_blank_lines_and_names_ignored_fields(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "in.jsonl",
        "\ufeff" + json.dumps({"prompt": "a", "meta": 1}),
        "",
        "   ",
        {"prompt": "b", "meta": 2, "max_token": 3},
        {"temperature": 1},
    )
    source = scan_input(str(path), defaults=DEFAULTS)
    assert source.count == 3 and source.bad_rows == 1
    assert list(source.keys.values()) == [1, 4, 5]  # ids default to line numbers
    assert source.unknown_fields == {"meta": 2, "max_token": 1}
    assert any("'max_token' ignored" in w for w in source.warnings)
    assert [r.id for r in source.rows(DEFAULTS)] == [1, 4, 5]


def test_text_input_is_one_prompt_per_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes(b'Hello\r\n\n{"prompt": "not json here"}\nbad \xff byte\n')
    rows = rows_of(path)
    assert [(r.id, r.prompt) for r in rows] == [
        (1, "Hello"),
        (3, '{"prompt": "not json here"}'),
        (4, "bad \ufffd byte"),
    ]
    assert rows_of(write_lines(tmp_path / "p.jsonl", "plain"), format="text")[0].prompt == "plain"


def test_stdin_is_spooled_and_read_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b'{"prompt": "a"}\n{"prompt": "b"}\n'
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    source = scan_input("-", defaults=DEFAULTS)
    assert source.name == "stdin" and source.count == 2
    assert [r.prompt for r in source.rows(DEFAULTS)] == ["a", "b"]
    assert [r.prompt for r in source.rows(DEFAULTS)] == ["a", "b"]
    source.close()


def test_output_resumes_and_cuts_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    out = Output(str(path))
    assert out.done == set() and not out.torn
    out.write({"id": 1, "text": "a"})
    out.write({"id": "x", "error": "bad"})
    out.close()
    with open(path, "ab") as f:
        f.write(b'{"id": 3, "text": "cut sho')  # a kill in the middle of a write
    out = Output(str(path))
    assert out.done == {"1", '"x"'} and out.torn
    out.write({"id": 3, "text": "whole"})
    out.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [1, "x", 3]


def test_output_refuses_a_file_that_is_not_batch_output(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my notes\nmore\n")
    with pytest.raises(BadOutput, match="line 1 is not a row of gpt2 batch output"):
        Output(str(path))
    path.write_text('{"id": 1}\n{"text": "no id"}\n')
    with pytest.raises(BadOutput, match="line 2"):
        Output(str(path))
    assert path.read_text() == '{"id": 1}\n{"text": "no id"}\n'  # untouched


def test_one_output_one_writer(tmp_path: Path) -> None:
    first = Output(str(tmp_path / "out.jsonl"))
    with pytest.raises(BadOutput, match="being written by another gpt2 batch"):
        Output(str(tmp_path / "out.jsonl"))
    first.close()
    Output(str(tmp_path / "out.jsonl")).close()


def test_ordered_rows_wait_for_the_rows_before_them(tmp_path: Path) -> None:
    out = Output(str(tmp_path / "out.jsonl"))
    ordered = OrderedRows(out)
    for seq in (2, 0, 3):
        ordered.write(seq, {"id": seq})
    assert ordered.waiting == 2  # 2 and 3 wait for 1
    ordered.write(1, {"id": 1})
    out.close()
    ids = [json.loads(x)["id"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert ids == [0, 1, 2, 3] and ordered.waiting == 0


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["batch", "in.jsonl", "--ray"], ["batch", "in.jsonl", "--ray="]),
        (["batch", "--ray", "in.jsonl"], ["batch", "--ray=", "in.jsonl"]),
        (["batch", "--ray", "10.0.0.5:6379", "in"], ["batch", "--ray=10.0.0.5:6379", "in"]),
        (["batch", "in", "--ray", "auto", "-o", "x"], ["batch", "in", "--ray=auto", "-o", "x"]),
        (["batch", "in", "--ray", "ray://head:10001"], ["batch", "in", "--ray=ray://head:10001"]),
        (["batch", "in", "--ray", "-o", "x"], ["batch", "in", "--ray=", "-o", "x"]),
        (["--debug", "batch", "--ray"], ["--debug", "batch", "--ray="]),
        (["batch", "in", "--", "--ray"], ["batch", "in", "--", "--ray"]),
        (["generate", "--ray"], ["generate", "--ray"]),
    ],
)
def test_ray_takes_an_optional_address(argv: list[str], expected: list[str]) -> None:
    assert expand_ray_flag(argv) == expected
