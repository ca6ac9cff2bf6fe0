"""Every data reader decodes a declared encoding, or refuses a non-UTF-8 file with its line and the option to set."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from tests.conftest import only_run_dir, read_json, run_cli
from trustml.data.text_classification import TextClassificationConfig, TextClassificationDataModule, read_records
from trustml.data.text_files import decode_text, read_text
from trustml.data.topical_chat import TopicalChatSentimentConfig, TopicalChatSentimentDataModule
from trustml.data.topical_chat_files import read_grounded_turns
from trustml.data.topical_chat_grounded import TopicalChatGrounded, TopicalChatGroundedConfig
from trustml.errors import DataError

LABELS = ("café", "naïve")


def _latin1_rows(n: int = 20) -> list[dict[str, str]]:
    return [{"text": f"crème brûlée {i}", "label": LABELS[i % 2]} for i in range(n)]


def _latin1_jsonl(path: Path, n: int = 20) -> Path:
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _latin1_rows(n)).encode("latin-1"))
    return path


def _latin1_csv(path: Path, n: int = 20) -> Path:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=["text", "label"])
    writer.writeheader()
    writer.writerows(_latin1_rows(n))
    path.write_bytes(buffer.getvalue().encode("latin-1"))
    return path


def _refusal(path: Path, line: int, option: str = "data.encoding") -> str:
    where = re.escape(f"{path}:{line}: not valid utf-8 text (byte 0x")
    return rf"^{where}[0-9a-f]{{2}} .*set {re.escape(option)}=latin-1"


# --- the shared helper ------------------------------------------------------------------------------


def test_the_helper_names_line_and_byte_and_decodes_what_it_is_told(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes("ok\nstill ok\nd\xe9j\xe0 vu\n".encode("latin-1"))
    with pytest.raises(DataError, match=_refusal(path, 3) + r".*or data.encoding=auto") as caught:
        read_text(path)
    assert "byte 0xe9 at byte 2 of the line" in str(caught.value)
    assert read_text(path, "latin-1").splitlines()[2] == "déjà vu"
    assert read_text(path, "cp1252").splitlines()[2] == "déjà vu"
    assert read_text(path, "auto").splitlines()[2] == "déjà vu"
    with pytest.raises(DataError, match=r"my.option='klingon' is not a known text encoding"):
        read_text(path, "klingon", option="my.option")
    with pytest.raises(DataError, match=r"missing.txt does not exist"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(DataError, match=r"is a folder, not a data file"):
        read_text(tmp_path)


def test_auto_drops_a_bom_and_reads_utf16_with_its_bom() -> None:
    assert decode_text("\ufeffhé".encode(), "x") == "hé"
    assert decode_text("hé\n".encode("utf-16"), "x", "auto") == "hé\n"
    with pytest.raises(DataError, match=r"UTF-16 byte-order mark: set data.encoding=utf-16"):
        decode_text("hé\n".encode("utf-16"), "x")


def test_a_strict_other_codec_names_the_option_without_guessing(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes("h\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"f.txt:1: not valid ascii text \(byte 0xe9 at byte 2 .*set data.encoding to"):
        read_text(path, "ascii")


# --- data=text_classification (JSONL and CSV) --------------------------------------------------------


@pytest.mark.parametrize("writer", [_latin1_jsonl, _latin1_csv], ids=["jsonl", "csv"])
def test_text_classification_refuses_latin1_by_default_and_reads_it_when_declared(writer, tmp_path: Path) -> None:
    suffix = ".jsonl" if writer is _latin1_jsonl else ".csv"
    path = writer(tmp_path / f"d{suffix}")
    with pytest.raises(DataError, match=_refusal(path, 1 if suffix == ".jsonl" else 2)):
        TextClassificationDataModule(TextClassificationConfig(path=str(path))).setup()
    for encoding in ("latin-1", "auto"):
        dm = TextClassificationDataModule(TextClassificationConfig(path=str(path), encoding=encoding))
        dm.setup()
        assert dm.label_names == sorted(LABELS)
        assert all(text.startswith("crème brûlée") for text in dm.splits["train"].inputs)


def test_text_classification_checks_the_encoding_name_up_front(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.encoding='utf8x' is not a known text encoding"):
        TextClassificationDataModule(TextClassificationConfig(path=str(tmp_path / "d.jsonl"), encoding="utf8x"))


def test_per_split_files_name_the_file_that_does_not_decode(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in _latin1_rows()), encoding="utf-8")
    bad = _latin1_jsonl(tmp_path / "bad.jsonl")
    dm = TextClassificationDataModule(
        TextClassificationConfig(train_path=str(good), val_path=str(good), test_path=str(bad))
    )
    with pytest.raises(DataError, match=_refusal(bad, 1)):
        dm.setup()


def test_a_utf8_bom_does_not_break_the_csv_header(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefftext,label\nhé,a\n".encode())
    (record,) = read_records(path, "text", "label")
    assert (record.text, record.label, record.line) == ("hé", "a", 2)


def test_the_cli_refuses_a_latin1_data_file_with_one_message_and_exit_2(tmp_path: Path) -> None:
    path = _latin1_jsonl(tmp_path / "latin.jsonl")
    out = run_cli(
        "data=text_classification", f"data.path={path}", "model=hf_encoder", "trainer.max_epochs=1", cwd=tmp_path
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "UnicodeDecodeError" not in out.stderr
    assert out.stderr.count("trustml: error:") == 1
    assert f"{path}:1: not valid utf-8 text" in out.stderr and "set data.encoding=latin-1" in out.stderr
    record = read_json(only_run_dir(tmp_path) / "run.json")
    assert record["status"] == "failed" and "data.encoding" in record["error"]["message"]


# --- the canary audit's source file (read by read_records) ------------------------------------------


def test_insert_canary_source_in_latin1_is_refused_with_the_file_and_line(tmp_path: Path) -> None:
    from trustml.privacy.audit.canary_text import write_canary_training_file

    source = _latin1_jsonl(tmp_path / "source.jsonl")
    with pytest.raises(DataError, match=rf"^{re.escape(str(source))}:1: not valid utf-8 text"):
        write_canary_training_file(source, tmp_path / "out.jsonl", label=LABELS[0], repetitions=2)
    assert not (tmp_path / "out.jsonl").exists()


def test_insert_canary_cli_names_its_encoding_flag_and_decodes_with_it(tmp_path: Path) -> None:
    source = _latin1_jsonl(tmp_path / "source.jsonl")
    dest = tmp_path / "out.jsonl"
    args = ["insert-canary", str(source), str(dest), "--label", LABELS[0], "--repetitions", "2"]
    refused = run_cli(*args, cwd=tmp_path, tool="trustml-audit")
    assert refused.returncode == 2 and "set --encoding=latin-1" in refused.stderr and "Traceback" not in refused.stderr
    assert not dest.exists()
    done = run_cli(*args, "--encoding", "latin-1", cwd=tmp_path, tool="trustml-audit")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in dest.read_text(encoding="utf-8").splitlines()]
    # the latin-1 text arrives intact in the UTF-8 copy, beside the two canary copies
    source_texts = {r["text"] for r in _latin1_rows()}
    assert source_texts <= {r["text"] for r in rows} and len(rows) == len(source_texts) + 2


# --- Topical-Chat: turn sentiment and knowledge-grounded responses ----------------------------------


def _topical_chat(folder: Path, encoding: str) -> Path:
    """A two-split Topical-Chat folder (conversations, reading sets, wiki) whose text needs ``encoding``."""
    folder.mkdir()
    wiki = {"shortened_wiki_lead_section": {"Beyoncé is a singer from Houston": 0}, "summarized_wiki_lead_section": {}}
    (folder / "wiki.json").write_bytes(json.dumps(wiki, ensure_ascii=False).encode(encoding))
    for split in ("valid_freq", "test_freq"):
        conversations, reading_sets = {}, {}
        for c in range(10):
            turns = [("agent_1", "do you like Beyoncé?"), ("agent_2", "yes, her café song"), ("agent_1", "très bien")]
            conversations[f"{split}{c}"] = {
                "content": [
                    {
                        "message": m,
                        "agent": a,
                        "sentiment": "Neutral",
                        "knowledge_source": ["FS1"],
                        "turn_rating": "Good",
                    }
                    for a, m in turns
                ]
            }
            section = {"FS1": {"entity": "Beyoncé", "shortened_wiki_lead_section": 0}}
            reading_sets[f"{split}{c}"] = {"agent_1": section, "agent_2": section}
        for name, content in (
            (f"conversations_{split}.json", conversations),
            (f"reading_sets_{split}.json", reading_sets),
        ):
            (folder / name).write_bytes(json.dumps(content, ensure_ascii=False, indent=1).encode(encoding))
    return folder


def test_topical_chat_sentiment_reads_a_declared_encoding_or_names_file_line_and_option(tmp_path: Path) -> None:
    folder = _topical_chat(tmp_path / "tc", "latin-1")
    options = {
        "data_dir": str(folder),
        "train_files": ["conversations_valid_freq.json"],
        "test_files": ["conversations_test_freq.json"],
        "val_fraction": 0.2,
    }
    with pytest.raises(DataError, match=_refusal(folder / "conversations_valid_freq.json", 5)):
        TopicalChatSentimentDataModule(TopicalChatSentimentConfig(**options)).setup()
    dm = TopicalChatSentimentDataModule(TopicalChatSentimentConfig(**options, encoding="latin-1"))
    dm.setup()
    assert "do you like Beyoncé?" in dm.splits["train"].inputs


def test_topical_chat_grounded_reads_a_declared_encoding_or_names_file_line_and_option(tmp_path: Path) -> None:
    folder = _topical_chat(tmp_path / "tc", "latin-1")
    with pytest.raises(DataError, match=_refusal(folder / "conversations_valid_freq.json", 5)):
        read_grounded_turns(folder, "valid_freq")
    turns = read_grounded_turns(folder, "valid_freq", encoding="latin-1")
    assert turns[0].knowledge == "Beyoncé is a singer from Houston" and turns[0].response == "yes, her café song"
    options = {"data_dir": str(folder), "train_splits": ["valid_freq"], "test_split": "test_freq", "val_fraction": 0.2}
    data = TopicalChatGrounded(TopicalChatGroundedConfig(**options, encoding="latin-1"))
    data.setup()
    assert len(data.splits["test"]) == 20
    with pytest.raises(DataError, match=_refusal(folder / "wiki.json", 1)):
        TopicalChatGrounded(TopicalChatGroundedConfig(**options)).setup()
