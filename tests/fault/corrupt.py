"""A corpus of damaged input files for the ingest fault tests: truncated and corrupted
compression (gzip, zstd, bzip2, xz), byte-order marks, deep nesting, oversized documents in every
format, NUL bytes, whitespace-only files and symlink loops.

Each ``Case`` writes its files into a folder of its own (``build``) next to a good file whose
records must survive, and says what ingest must make of them (``Expect``). ``build_all`` lays
every case out under one root, so a single ingest can take them all at once.

Record texts are random words, so that no two records of the corpus are duplicates or
near-duplicates of each other unless a case means them to be.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

MIB = 1 << 20
BOM = b"\xef\xbb\xbf"
GOOD_FILE = "good.jsonl"


def words(seed: str, n: int = 12) -> str:
    """``n`` random pseudo-words, different for every seed."""
    rng = random.Random(seed)
    return " ".join("".join(rng.choice("bcdfghjklmnpqrstvwxz") + rng.choice("aeiou")
                            for _ in range(rng.randint(2, 4))) for _ in range(n))


def texts(tag: str, n: int) -> list[str]:
    return [words(f"{tag}/{i}") for i in range(n)]


def jsonl(items: list[str]) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in items).encode()


def nested(depth: int) -> str:
    return '{"text": "deep", "x": ' + "[" * depth + "]" * depth + "}"


@dataclass(frozen=True)
class Expect:
    reason: str | None = None  # text in the reason of every quarantined record of the bad files
    quarantined: int | None = None  # exactly this many records of the bad files quarantined
    kept: int | None = None  # exactly this many records of the bad files kept
    damaged: bool = False  # the file is recorded as damaged (and not complete) in the manifest
    unreadable: bool = False  # the file is recorded as not complete (it is read again next time)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], None]  # writes the bad file(s) into a folder
    expect: Expect
    settings: dict = field(default_factory=dict)  # ingest.* settings the case needs


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        (folder / name).write_bytes(data)
    return build


def _truncated(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


def _zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


# a few hundred records, so that compressed streams span several blocks (zstd blocks hold up
# to 128 KiB of output) and gzip's CRC comes long after the first records were read
BIG = jsonl(texts("big", 2400))


def small(tag: str) -> bytes:
    return jsonl(texts(tag, 3))


def _symlink_loop(folder: Path) -> None:
    os.symlink("loop-b", folder / "loop-a")
    os.symlink("loop-a", folder / "loop-b")


def _huge_csv(folder: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "text"])
    w.writerow(["before", words("csv-before")])
    w.writerow(["huge", "x " * (5 * MIB // 2) + "end"])  # a 5 MiB field, over the 4 MiB of a row
    for i in range(3):
        w.writerow([f"after{i}", words(f"csv-after/{i}")])
    (folder / "huge.csv").write_text(buf.getvalue())


def _huge_parquet(folder: Path) -> None:
    rows = [words("pq/0"), "y " * (2 * MIB), words("pq/2")]
    pq.write_table(pa.table({"text": rows}), folder / "huge.parquet")


def _huge_wiki(folder: Path) -> None:
    line = ("z " * 1000 + "\n").encode()
    doc = b'<doc id="1" url="?curid=1" title="Huge">\nHuge\n' + line * 1200 + b"</doc>\n"
    good = (b'<doc id="2" url="?curid=2" title="Fine">\nFine\n' + words("wiki-fine").encode()
            + b"\n</doc>\n")
    (folder / "wiki_huge").write_bytes(doc + good)


def _nul_late(kind: str) -> Callable[[Path], None]:
    head = [words(f"nul-{kind}/{i}") for i in range(200)]  # well over 8 KiB before the NUL
    if kind == "txt":
        data = "\n".join(head).encode() + b"\nbad \x00 line\n" + words("nul-txt-end").encode()
        return _write("nul.txt", data + b"\n")
    rows = "".join(f'"{t}"\n' for t in head)
    return _write("nul.csv", b"text\n" + rows.encode() + b'"bad \x00 row"\n"'
                  + words("nul-csv-end").encode() + b'"\n')


def _wiki(tag: str) -> bytes:
    return (f'<doc id="{tag}" url="?curid={tag}" title="T{tag}">\nT{tag}\n{words(tag)}\n</doc>\n'
            ).encode()


def _json_array(items: list[object]) -> bytes:
    return json.dumps(items).encode()


CASES: list[Case] = [
    # compression: damaged streams are quarantined whole, every record read from them counted
    Case("gz_truncated", _write("cut.jsonl.gz", _truncated(gzip.compress(BIG), 0.6)),
         Expect("truncated compressed file", kept=0, damaged=True)),
    Case("gz_crc", _write("crc.jsonl.gz", _flip(gzip.compress(BIG), -6)),
         Expect("corrupt compressed file", quarantined=2400, kept=0, damaged=True)),
    Case("gz_size", _write("size.jsonl.gz", _flip(gzip.compress(BIG), -2)),
         Expect("corrupt compressed file", quarantined=2400, kept=0, damaged=True)),
    Case("gz_deflate", _write("deflate.jsonl.gz", _flip(gzip.compress(BIG), 5000)),
         Expect("compressed file", kept=0, damaged=True)),
    Case("gz_trailing_garbage", _write("tail.jsonl.gz", gzip.compress(small("gzt")) + b"junk"),
         Expect("corrupt compressed file", kept=0, damaged=True)),
    Case("zst_truncated_half", _write("half.jsonl.zst", _truncated(_zst(BIG), 0.5)),
         Expect("truncated compressed file", kept=0, damaged=True)),
    Case("zst_truncated_end", _write("end.jsonl.zst", _zst(BIG)[:-7]),
         Expect("truncated compressed file", kept=0, damaged=True)),
    Case("zst_truncated_small", _write("small.jsonl.zst", _zst(small("zts"))[:-7]),
         Expect("truncated compressed file", quarantined=1, kept=0, damaged=True)),
    Case("zst_truncated_header", _write("head.txt.zst", _zst(b"one line\n")[:3]),
         Expect("truncated compressed file", quarantined=1, kept=0, damaged=True)),
    Case("zst_checksum", _write("sum.jsonl.zst", _flip(_zst(BIG), -2)),
         Expect("corrupt compressed file", kept=0, damaged=True)),
    Case("zst_two_frames", _write("frames.jsonl.zst", _zst(small("zf1")) + _zst(small("zf2"))),
         Expect(quarantined=0, kept=6)),
    Case("bz2_truncated", _write("cut.jsonl.bz2", _truncated(bz2.compress(BIG), 0.5)),
         Expect("truncated compressed file", kept=0, damaged=True)),
    Case("bz2_complete", _write("whole.jsonl.bz2", bz2.compress(small("bz2"))), Expect(kept=3)),
    Case("xz_truncated", _write("cut.jsonl.xz", _truncated(lzma.compress(BIG), 0.5)),
         Expect("truncated compressed file", kept=0, damaged=True)),
    Case("xz_corrupt", _write("bad.jsonl.xz", _flip(lzma.compress(BIG), -20)),
         Expect("compressed file", kept=0, damaged=True)),
    Case("xz_complete", _write("whole.jsonl.xz", lzma.compress(small("xz"))), Expect(kept=3)),
    # deep nesting: the record is quarantined, the rest of its file kept
    Case("deep_jsonl", _write("deep.jsonl", small("deep_jsonl") + nested(1000).encode() + b"\n"
                              + jsonl(texts("deep-after", 2))),
         Expect("nested", quarantined=1, kept=5)),
    Case("deep_json_array", _write("deep.json", b'[{"text": "' + words("da0").encode() + b'"}, '
                                   + nested(5000).encode() + b', {"text": "'
                                   + words("da2").encode() + b'"}]'),
         Expect("nested", quarantined=1, kept=2)),
    # documents over the size limit, in every format
    Case("huge_json_array_item", _write("huge.json", _json_array(
        [{"text": words("ja/0")}, {"text": "w " * MIB}, {"text": words("ja/2")}])),
         Expect("longer than", quarantined=1, kept=2)),
    Case("huge_jsonl_line", _write("huge.jsonl", small("huge_jsonl_line") + jsonl(["v " * MIB])
                                   + jsonl(texts("jl-after", 2))),
         Expect("longer than", quarantined=1, kept=5)),
    Case("huge_csv_field", _huge_csv, Expect("longer than", quarantined=1, kept=4)),
    Case("huge_parquet_cell", _huge_parquet, Expect("longer than", quarantined=1, kept=2)),
    Case("huge_wiki_doc", _huge_wiki, Expect("longer than", quarantined=1, kept=1)),
    Case("huge_txt_file", _write("huge.txt", b"u " * (2 * MIB)),
         Expect("longer than", quarantined=1, kept=0), {"txt_mode": "file"}),
    # byte-order marks: stripped, nothing lost
    Case("bom_csv", _write("bom.csv", BOM + b"text,id\n" + words("bc").encode() + b",b1\n"),
         Expect(quarantined=0, kept=1)),
    Case("bom_jsonl", _write("bom.jsonl", BOM + small("bom_jsonl")), Expect(quarantined=0, kept=3)),
    Case("bom_json_array", _write("bom.json", BOM + _json_array([{"text": words("bja")}])),
         Expect(quarantined=0, kept=1)),
    Case("bom_wiki", _write("wiki_bom", BOM + _wiki("bw1") + _wiki("bw2")),
         Expect(quarantined=0, kept=2)),
    Case("bom_jsonl_gz", _write("bom.jsonl.gz", gzip.compress(BOM + jsonl(texts("bgz", 2)))),
         Expect(quarantined=0, kept=2)),
    # NUL bytes after the first 8 KiB: the record is quarantined, not silently stripped
    Case("nul_late_txt", _nul_late("txt"), Expect("NUL byte", quarantined=1, kept=201)),
    Case("nul_late_csv", _nul_late("csv"), Expect("NUL byte", quarantined=1, kept=201)),
    # files with no documents are counted and reported
    Case("whitespace_txt", _write("blank.txt", b"  \n\n\t \r\n   \n"),
         Expect("no documents", quarantined=1, kept=0)),
    Case("whitespace_jsonl", _write("blank.jsonl", b"\n \n\n"),
         Expect("no documents", quarantined=1, kept=0)),
    Case("bom_only", _write("bom.txt", BOM), Expect("empty file", quarantined=1, kept=0)),
    Case("csv_header_only", _write("header.csv", b"id,text\n"),
         Expect("no documents", quarantined=1, kept=0)),
    # a symlink loop inside a source folder is reported, not followed, not fatal
    Case("symlink_loop", _symlink_loop,
         Expect("unreadable file", quarantined=2, kept=0, unreadable=True)),
    # structure damage in uncompressed files
    Case("json_array_cut", _write("cut.json", _json_array(
        [{"text": t} for t in texts("jac", 3)])[:-10]),
         Expect("JSON array", quarantined=1, kept=2)),
    Case("jsonl_cut", _write("cut.jsonl", jsonl(texts("jlc", 3))[:-10]),
         Expect("malformed JSON", quarantined=1, kept=2)),
    Case("csv_stray_quote", _write("inch.csv", b'text,id\n' + words("sq1").encode()
                                   + b' 5" screen,s1\n' + words("sq2").encode() + b",s2\n"),
         Expect(quarantined=0, kept=2)),
    Case("csv_unclosed_quote", _write("open.csv", b'text,id\n' + words("uq1").encode()
                                      + b',u1\n"never closed,u2\n'),
         Expect("malformed", quarantined=1, kept=1)),
]


def build(case: Case, root: Path) -> Path:
    """The case's folder under ``root``: its bad file(s) and ``good.jsonl``."""
    folder = root / case.name
    folder.mkdir(parents=True)
    case.build(folder)
    (folder / GOOD_FILE).write_bytes(jsonl(good_texts(case)))
    return folder


def good_texts(case: Case) -> list[str]:
    return texts(f"good/{case.name}", 3)


def build_all(root: Path, cases: list[Case] | None = None) -> dict[str, Path]:
    return {c.name: build(c, root) for c in (cases if cases is not None else CASES)}
