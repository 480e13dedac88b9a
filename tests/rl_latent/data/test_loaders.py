"""Loaders on the real GSM8K / iCoT files, save/load round trips, and errors that name file and line."""

import json

import pytest

from rl_latent.data.arith import ArithSpec, generate_arith
from rl_latent.data.loaders import (
    DataFormatError,
    equation_dag,
    load_data,
    load_gsm8k,
    load_gsm8k_aug,
    load_icot,
    save_jsonl,
)
from rl_latent.data.multiplication import generate_multiplication, to_icot_line
from rl_latent.data.schema import FEATURES


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_real_gsm8k_train(shared_data, tmp_path):
    ds = load_gsm8k(shared_data / "gsm8k" / "train.jsonl")
    assert len(ds) == 7473 and ds.features == FEATURES
    first = ds[0]
    assert first["steps"] == ["<<48/2=24>>", "<<48+24=72>>"] and first["answer"] == "72"
    assert first["step_results"] == ["24", "72"] and first["dag"] == [[], [0]] and first["source"] == "gsm8k"
    assert ds[1]["steps"] == ["<<12/60=0.2>>", "<<0.2*50=10>>"] and ds[1]["dag"] == [[], [0]]
    assert all("," not in a for a in ds["answer"])
    head = tmp_path / "head.jsonl"  # load_data must detect the GSM8K format by its keys
    head.write_text("".join((shared_data / "gsm8k" / "train.jsonl").read_text().splitlines(True)[:200]))
    assert load_data(head).to_list() == ds.select(range(200)).to_list()


def test_icot_files(shared_data):
    gsm = load_icot(shared_data / "icot" / "gsm8k" / "valid.txt")
    assert len(gsm) == 500 and gsm[0]["answer"] == "300"
    assert gsm[0]["steps"] == ["<<4-2=2>>", "<<2/.5=4>>", "<<12/4=3>>", "<<100*3=300>>"]
    assert gsm[0]["dag"] == [[], [0], [1], [2]] and gsm[0]["source"] == "icot"
    tobias = next(r for r in gsm if r["question"].startswith("Tobias is a tractor salesman"))
    assert tobias["answer"] == "5000"  # "#### 5,000" in the file
    path = shared_data / "icot" / "4_by_4_mult" / "valid.txt"
    mult = load_data(path)
    assert [to_icot_line(r) for r in mult] == path.read_text().splitlines()
    assert set(mult["source"]) == {"mult4"}


def test_gsm8k_aug_local_jsonl_and_json(tmp_path):
    rows = [
        {
            "question": "Q1?",
            "steps": ["<<600*30/100=180>>", "<<600*10/100=60>>", "<<180+60=240>>"],
            "answer": "240",
        },
        {"question": "Q2?", "cot": "<<2*3=6>> <<6+1=7>>", "answer": "1,007"},
    ]
    ds = load_gsm8k_aug(_write_jsonl(tmp_path / "aug.jsonl", rows))
    assert ds[0]["dag"] == [[], [], [0, 1]] and ds[0]["step_results"] == ["180", "60", "240"]
    assert ds[1]["steps"] == ["<<2*3=6>>", "<<6+1=7>>"] and ds[1]["answer"] == "1007"
    assert set(ds["source"]) == {"gsm8k-aug"}
    (tmp_path / "aug.json").write_text(json.dumps(rows))
    assert load_data(tmp_path / "aug.json").to_list() == ds.to_list()


def test_directory_with_split_files(tmp_path):
    save_jsonl(generate_arith(5, 0), tmp_path / "train.jsonl")
    save_jsonl(generate_arith(3, 1), tmp_path / "valid.jsonl")
    assert len(load_data(tmp_path, "train")) == 5 and len(load_data(tmp_path, "validation")) == 3
    with pytest.raises(FileNotFoundError, match="no test.jsonl"):
        load_data(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_data(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    "ds",
    [generate_arith(30, 0, ArithSpec(nl_cot=True, distractors=1)), generate_multiplication(10, 0, 3)],
    ids=["arith-nl", "mult3"],
)
def test_save_jsonl_round_trip(tmp_path, ds):
    path = save_jsonl(ds, tmp_path / "sub" / "data.jsonl")
    back = load_data(path)
    assert back.features == ds.features and back.to_list() == ds.to_list()


def test_equation_dag_links_latest_producer():
    steps = ["<<2+2=4>>", "<<4*3=12>>", "<<1+3=4>>", "<<4+12=16>>", "<<5-1>>"]
    assert equation_dag(steps) == [[], [0], [], [1, 2], []]  # "4" in step 3 reads step 2, the latest 4


GOOD_LINE = '{"question": "q", "answer": "<<1+1=2>> #### 2"}\n'


@pytest.mark.parametrize(
    "content, message",
    [
        (GOOD_LINE * 16 + '{"question": "q", "answer": "no marker"}\n', ":17: no '####' answer"),
        (GOOD_LINE + '{"answer": "#### 3"}\n', r":2: missing key\(s\) \['question'\]"),
        (GOOD_LINE + '{"question": "q", \n', ":2: bad JSON"),
        ('{"question": "q", "answer": "#### two"}\n', ":1: unparsable numeric answer"),
    ],
)
def test_malformed_gsm8k_rows_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=f"train.jsonl{message}"):
        load_data(path)


def test_malformed_icot_and_our_schema_rows(tmp_path):
    bad_icot = tmp_path / "valid.txt"
    bad_icot.write_text("1 2 * 3 4||3 6 0 + 0 4 8 0 #### 3 0 9 0\n1 2 * 3 4||3 6 0 + 0 4 8 0 #### 3 0 9 1\n")
    with pytest.raises(DataFormatError, match=r"valid.txt:2: CoT or answer disagrees"):
        load_icot(bad_icot)
    bad_icot.write_text("what?|| <<1+1=2>> 2\n")
    with pytest.raises(DataFormatError, match="valid.txt:1: no '####' answer"):
        load_data(bad_icot)
    rows = generate_arith(3, 0).to_list()
    rows[2]["num_steps"] += 1
    path = _write_jsonl(tmp_path / "ours.jsonl", rows)
    with pytest.raises(DataFormatError, match="ours.jsonl:3: 'num_steps'"):
        load_data(path)
