"""Legacy encodings through ingest: real sentences written here, encoded in ISO-8859 parts and
windows-125x code pages, come out as the same text, with the encoding and its confidence per
document; a doubtful decode is listed in the manifest with its text; `encoding` overrides
detection for text that is not UTF-8 and is part of the config (and the digest) only when set.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from tasks.ingest import IngestConfig, run_ingest
from tasks.ingest.charsets import LOW_CONFIDENCE, plausibility

# (language, code page, text): sentences with the letters that tell the code pages apart.
CASES = [
    ("pl", "iso8859-2", "Zażółć gęślą jaźń. W Krakowie nad Wisłą stoi Wawel, a smok wawelski zionie ogniem."),
    (
        "pl",
        "cp1250",
        "Źródło rzeki Wisły leży w Beskidach; żubry żyją w Puszczy Białowieskiej, a ślimak śpi.",
    ),
    ("cs", "cp1250", "Příliš žluťoučký kůň úpěl ďábelské ódy. Praha leží na řece Vltavě a most je starý."),
    ("hu", "iso8859-2", "Árvíztűrő tükörfúrógép. Budapest a Duna két partján fekszik, a hidak gyönyörűek."),
    ("mt", "iso8859-3", "Il-ħitan qodma tagħha jħarsu lejn il-port ta' Malta; żgħażagħ ġejjin u ċ-ċentru."),
    ("ru", "iso8859-5", "Съешь же ещё этих мягких французских булок, да выпей чаю. Москва стоит на реке."),
    ("ru", "koi8-r", "Волга - самая длинная река Европы, и летом по ней ходят большие белые теплоходы."),
    ("uk", "cp1251", "Київ стоїть на річці Дніпро, і влітку там дуже гарно; ґанок біля хати був жовтий."),
    ("el", "iso8859-7", "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας και ο Παρθενώνας βρίσκεται στην Ακρόπολη."),
    ("fr", "iso8859-15", "L'œuvre coûte 20 € : le cœur déçu mais l'âme plutôt naïve, Louÿs rêva d'un été."),
    ("tr", "cp1254", "Pijamalı hasta yağız şoföre çabucak güvendi. İstanbul çok güzel bir şehirdir."),
    ("lt", "cp1257", "Vilnius yra Lietuvos sostinė, o Neris teka per miestą; žiemą čia būna šalta."),
    (
        "de",
        "cp1252",
        "Größere Änderungen an den Straßen von München führen zu Staus; die Bürger ärgern sich.",
    ),
]


def data_rows(out: Path) -> list[dict]:
    m = json.loads((out / "manifest.json").read_text())
    return [r for o in m["outputs"] for r in pq.read_table(out / o["path"]).to_pylist()]


def test_code_pages_are_detected_by_plausibility(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    raw = {}
    for lang, enc, text in CASES:
        name = f"{lang}-{enc}.txt"
        raw[name] = text.encode(enc)
        (src / name).write_bytes(raw[name])
    (src / "utf8.txt").write_text("Déjà UTF-8, nothing to detect.", encoding="utf-8")
    m = run_ingest([str(src)], tmp_path / "out")

    rows = {Path(r["path"]).name: r for r in data_rows(tmp_path / "out")}
    assert len(rows) == len(CASES) + 1 and m["counts"]["run"]["legacy_encoding"] == len(CASES)
    wrong = []
    for lang, enc, text in CASES:
        r = rows[f"{lang}-{enc}.txt"]
        # a code page that decodes these bytes to the same text is as right (iso8859-7 = cp1253 here)
        if r["text"] != text or raw[f"{lang}-{enc}.txt"].decode(r["encoding"]) != text:
            wrong.append((lang, enc, r["encoding"], r["text"][:40]))
        assert r["encoding_confidence"] >= LOW_CONFIDENCE, (lang, enc, r["encoding_confidence"])
    assert wrong == []
    assert rows["pl-iso8859-2.txt"]["encoding"] == "iso8859-2"
    assert rows["fr-iso8859-15.txt"]["encoding"] == "iso8859-15"
    assert rows["ru-koi8-r.txt"]["encoding"] == "koi8-r"
    assert rows["utf8.txt"]["encoding"] == "utf-8" and rows["utf8.txt"]["encoding_confidence"] is None
    assert "encoding_doubts" not in m


def test_doubtful_decodes_are_reported_with_their_text(tmp_path):
    """Words of five languages in one cp1252 text: no one alphabet explains it, so the decode is
    doubtful and the manifest shows it."""
    text = "Þórður ærið œuvre Größe naïve señor ångström"
    assert plausibility(text)[0] < LOW_CONFIDENCE
    (tmp_path / "mixed.txt").write_bytes(text.encode("cp1252"))
    m = run_ingest([str(tmp_path / "mixed.txt")], tmp_path / "out")
    assert m["counts"]["run"]["low_confidence_encoding"] == 1
    (doubt,) = m["encoding_doubts"]
    assert doubt["path"].endswith("mixed.txt") and doubt["offset"] == 0
    assert doubt["confidence"] < LOW_CONFIDENCE and doubt["sample"]


def test_the_encoding_override_replaces_detection_for_text_that_is_not_utf8(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    text = "Zażółć gęślą jaźń"
    (src / "pl.txt").write_bytes(text.encode("iso8859-2"))
    (src / "utf8.txt").write_text("Już w UTF-8.", encoding="utf-8")
    # Read as cp1250 on purpose: the override wins over detection (ż and ó are at the same bytes,
    # ą and ś are not), and UTF-8 files stay UTF-8.
    run_ingest([str(src)], tmp_path / "out", IngestConfig(encoding="windows-1250"))
    rows = {Path(r["path"]).name: r for r in data_rows(tmp_path / "out")}
    assert rows["pl.txt"]["encoding"] == "cp1250"
    assert rows["pl.txt"]["text"] == text.encode("iso8859-2").decode("cp1250") != text
    assert rows["utf8.txt"]["text"] == "Już w UTF-8." and rows["utf8.txt"]["encoding"] == "utf-8"


@pytest.mark.parametrize("bad", ["iso8859-99", "utf-16"])
def test_a_bad_encoding_name_is_an_error_naming_the_parameter(bad):
    with pytest.raises(ValidationError) as e:
        IngestConfig(encoding=bad)
    assert f"ingest.encoding={bad!r}" in str(e.value)
