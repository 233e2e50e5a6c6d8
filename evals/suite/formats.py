"""Write and read XLSX and PDF files with the standard library only, byte-deterministically.

The suite ships an XLSX workbook and a PDF report. They are written here, without
openpyxl or a PDF library, so that regenerating the suite gives the same bytes
on every machine (no timestamps, no compression whose output depends on the
zlib version), and read back here too, so that the reference answers are
computed from the files exactly as shipped. Standard readers (openpyxl, pypdf)
open them as well; the tests check that where those are installed.

Only what the suite needs is supported: cells holding strings, numbers and
dates; pages of single-font text lines.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

__all__ = ["read_pdf_text", "read_xlsx", "write_pdf", "write_xlsx"]

# --------------------------------------------------------------------------- XLSX

_NS_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_NS_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_NS_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_EXCEL_EPOCH = dt.date(1899, 12, 30)
# Built-in number formats that are dates (ECMA-376 18.8.30).
_DATE_FORMATS = {14, 15, 16, 17, 18, 19, 20, 21, 22, 45, 46, 47}
_STYLE_DATE = 1  # index in cellXfs of the date style written below
_STYLE_MONEY = 2  # index in cellXfs of the 0.00 style written below

_CONTENT_TYPES = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
<Default Extension="xml" ContentType="application/xml"/>
<Override PartName="/xl/workbook.xml" \
ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>
<Override PartName="/xl/styles.xml" \
ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>
<Override PartName="/xl/sharedStrings.xml" \
ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>
{sheets}
</Types>
"""

_SHEET_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"

_ROOT_RELS = f"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="{_NS_PKG_REL}">
<Relationship Id="rId1" \
Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" \
Target="xl/workbook.xml"/>
</Relationships>
"""

_STYLES = f"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<styleSheet xmlns="{_NS_MAIN}">
<fonts count="1"><font><sz val="11"/><name val="Calibri"/></font></fonts>
<fills count="2"><fill><patternFill patternType="none"/></fill>\
<fill><patternFill patternType="gray125"/></fill></fills>
<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>
<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>
<cellXfs count="3">
<xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>
<xf numFmtId="14" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>
<xf numFmtId="2" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>
</cellXfs>
<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>
</styleSheet>
"""


def _column_letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def _column_index(letters: str) -> int:
    value = 0
    for ch in letters:
        value = value * 26 + (ord(ch) - 64)
    return value - 1


def _number_text(value: float | int) -> str:
    if isinstance(value, bool):
        raise TypeError("booleans are not supported in cells")
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def write_xlsx(path: Path, sheets: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
    """Write a workbook of plain sheets.

    Args:
        path: The file to write.
        sheets: ``(name, rows)`` pairs; a cell is ``str``, ``int``, ``float``
            (written with two decimals shown), ``datetime.date`` (an Excel date
            serial with a date format) or ``None`` (empty).
    """
    strings: dict[str, int] = {}
    sheet_xml: list[str] = []
    for _name, rows in sheets:
        out = [
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n',
            f'<worksheet xmlns="{_NS_MAIN}" xmlns:r="{_NS_REL}">',
        ]
        width = max((len(r) for r in rows), default=0)
        if rows and width:
            out.append(f'<dimension ref="A1:{_column_letter(width - 1)}{len(rows)}"/>')
        out.append("<sheetData>")
        for r, row in enumerate(rows, start=1):
            out.append(f'<row r="{r}">')
            for c, value in enumerate(row):
                ref = f"{_column_letter(c)}{r}"
                if value is None:
                    continue
                if isinstance(value, str):
                    index = strings.setdefault(value, len(strings))
                    out.append(f'<c r="{ref}" t="s"><v>{index}</v></c>')
                elif isinstance(value, dt.datetime):
                    raise TypeError("datetimes are not supported; use datetime.date")
                elif isinstance(value, dt.date):
                    serial = (value - _EXCEL_EPOCH).days
                    out.append(f'<c r="{ref}" s="{_STYLE_DATE}"><v>{serial}</v></c>')
                elif isinstance(value, float):
                    out.append(f'<c r="{ref}" s="{_STYLE_MONEY}"><v>{_number_text(value)}</v></c>')
                else:
                    out.append(f'<c r="{ref}"><v>{_number_text(value)}</v></c>')
            out.append("</row>")
        out.append("</sheetData></worksheet>\n")
        sheet_xml.append("".join(out))

    workbook = [
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n',
        f'<workbook xmlns="{_NS_MAIN}" xmlns:r="{_NS_REL}"><sheets>',
    ]
    rels = [
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n',
        f'<Relationships xmlns="{_NS_PKG_REL}">',
    ]
    overrides = []
    for i, (name, _rows) in enumerate(sheets, start=1):
        workbook.append(
            f'<sheet name="{escape(name, {chr(34): "&quot;"})}" sheetId="{i}" r:id="rId{i}"/>'
        )
        rels.append(
            f'<Relationship Id="rId{i}" Type="{_NS_REL}/worksheet" '
            f'Target="worksheets/sheet{i}.xml"/>'
        )
        overrides.append(
            f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="{_SHEET_TYPE}"/>'
        )
    n = len(sheets)
    workbook.append("</sheets></workbook>\n")
    rels.append(f'<Relationship Id="rId{n + 1}" Type="{_NS_REL}/styles" Target="styles.xml"/>')
    rels.append(
        f'<Relationship Id="rId{n + 2}" Type="{_NS_REL}/sharedStrings" Target="sharedStrings.xml"/>'
    )
    rels.append("</Relationships>\n")
    shared = [
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n',
        f'<sst xmlns="{_NS_MAIN}" count="{len(strings)}" uniqueCount="{len(strings)}">',
    ]
    for text in strings:  # dicts keep insertion order: index order
        space = ' xml:space="preserve"' if text != text.strip() else ""
        shared.append(f"<si><t{space}>{escape(text)}</t></si>")
    shared.append("</sst>\n")

    parts = [
        ("[Content_Types].xml", _CONTENT_TYPES.format(sheets="\n".join(overrides))),
        ("_rels/.rels", _ROOT_RELS),
        ("xl/workbook.xml", "".join(workbook)),
        ("xl/_rels/workbook.xml.rels", "".join(rels)),
        ("xl/styles.xml", _STYLES),
        ("xl/sharedStrings.xml", "".join(shared)),
    ]
    parts += [(f"xl/worksheets/sheet{i}.xml", xml) for i, xml in enumerate(sheet_xml, start=1)]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in parts:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED  # deflate output varies with zlib
            info.external_attr = 0o644 << 16
            info.create_system = 3
            archive.writestr(info, text.encode("utf-8"))
    path.write_bytes(buffer.getvalue())


def _q(tag: str, ns: str = _NS_MAIN) -> str:
    return f"{{{ns}}}{tag}"


def read_xlsx(path: Path) -> dict[str, list[list[Any]]]:
    """Read every sheet of a workbook into rows of values.

    Strings come back as ``str``, numbers as ``int`` when integral else
    ``float``, cells with a date format as ``datetime.date``, empty cells as
    ``None``. Rows are padded to the sheet's width.

    Args:
        path: The ``.xlsx`` file.

    Returns:
        Sheet name to rows, in workbook order.
    """
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
        rels = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
        targets = {r.get("Id"): r.get("Target", "") for r in rels}
        shared: list[str] = []
        if "xl/sharedStrings.xml" in names:
            for si in ElementTree.fromstring(archive.read("xl/sharedStrings.xml")):
                shared.append("".join(t.text or "" for t in si.iter(_q("t"))))
        date_styles: set[int] = set()
        if "xl/styles.xml" in names:
            styles = ElementTree.fromstring(archive.read("xl/styles.xml"))
            custom = {}
            formats = styles.find(_q("numFmts"))
            for fmt in formats if formats is not None else []:
                code = fmt.get("formatCode", "").lower()
                custom[int(fmt.get("numFmtId", "0"))] = bool(re.search(r"[dy]", code))
            xfs = styles.find(_q("cellXfs"))
            for i, xf in enumerate(xfs if xfs is not None else []):
                fmt_id = int(xf.get("numFmtId", "0"))
                if fmt_id in _DATE_FORMATS or custom.get(fmt_id):
                    date_styles.add(i)
        result: dict[str, list[list[Any]]] = {}
        sheets = workbook.find(_q("sheets"))
        for sheet in sheets if sheets is not None else []:
            target = targets[sheet.get(_q("id", _NS_REL))]
            member = target.lstrip("/") if target.startswith("/") else "xl/" + target
            root = ElementTree.fromstring(archive.read(member))
            rows: list[list[Any]] = []
            for row in root.iter(_q("row")):
                r = int(row.get("r", str(len(rows) + 1))) - 1
                while len(rows) <= r:
                    rows.append([])
                cells = rows[r]
                for c in row.findall(_q("c")):
                    ref = c.get("r", "")
                    col = _column_index(re.sub(r"\d", "", ref)) if ref else len(cells)
                    while len(cells) <= col:
                        cells.append(None)
                    cells[col] = _cell_value(c, shared, date_styles)
            width = max((len(r) for r in rows), default=0)
            result[sheet.get("name", "")] = [r + [None] * (width - len(r)) for r in rows]
        return result


def _cell_value(cell: ElementTree.Element, shared: list[str], date_styles: set[int]) -> Any:
    kind = cell.get("t", "n")
    v = cell.find(_q("v"))
    text = v.text if v is not None else None
    if kind == "s":
        return shared[int(text or 0)]
    if kind == "inlineStr":
        return "".join(t.text or "" for t in cell.iter(_q("t")))
    if kind in ("str", "e"):
        return text
    if text is None:
        return None
    if kind == "b":
        return text == "1"
    number = float(text)
    if int(cell.get("s", "0")) in date_styles:
        return _EXCEL_EPOCH + dt.timedelta(days=int(number))
    return int(number) if number.is_integer() and re.fullmatch(r"-?\d+", text) else number


# --------------------------------------------------------------------------- PDF

_PAGE_WIDTH, _PAGE_HEIGHT = 612, 792
_LEADING = 14
_TOP = 740
_LEFT = 56


def _pdf_string(text: str) -> str:
    if not text.isascii():
        raise ValueError(f"only ASCII text is supported in the PDF writer: {text!r}")
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def write_pdf(path: Path, pages: Sequence[Sequence[str]], *, title: str = "") -> None:
    """Write a text-only PDF (Helvetica 10 pt, one string per line, no compression).

    Args:
        path: The file to write.
        pages: Lines of text per page (ASCII; at most ~50 lines a page).
        title: The document title stored in the info dictionary.
    """
    objects: list[bytes] = []  # object i+1

    def add(body: str | bytes) -> int:
        objects.append(body.encode("latin-1") if isinstance(body, str) else body)
        return len(objects)

    catalog = add("")  # filled in below
    pages_obj = add("")
    font = add("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    kids = []
    for lines in pages:
        ops = ["BT", "/F1 10 Tf", f"{_LEADING} TL", f"{_LEFT} {_TOP} Td"]
        for i, line in enumerate(lines):
            if i:
                ops.append("T*")
            ops.append(f"{_pdf_string(line)} Tj")
        ops.append("ET")
        stream = ("\n".join(ops) + "\n").encode("latin-1")
        content = add(
            b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"endstream"
        )
        kids.append(
            add(
                f"<< /Type /Page /Parent {pages_obj} 0 R /MediaBox [0 0 {_PAGE_WIDTH} "
                f"{_PAGE_HEIGHT}] /Resources << /Font << /F1 {font} 0 R >> >> "
                f"/Contents {content} 0 R >>"
            )
        )
    objects[catalog - 1] = f"<< /Type /Catalog /Pages {pages_obj} 0 R >>".encode()
    objects[pages_obj - 1] = (
        f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>"
    ).encode()
    info = add(f"<< /Title {_pdf_string(title)} /Producer (insitu.evals.suite) >>")

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n".encode()
    out += b"0000000000 65535 f \n"
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root {catalog} 0 R /Info {info} 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n"
    ).encode()
    path.write_bytes(bytes(out))


_STREAM = re.compile(rb"<<(.*?)>>\s*stream\r?\n(.*?)endstream", re.DOTALL)
_TEXT_OP = re.compile(rb"\((?:\\.|[^\\)])*\)\s*Tj|T\*|\bET\b|-?[\d.]+\s+-?[\d.]+\s+Td")


def _unescape(raw: bytes) -> str:
    out = bytearray()
    i = 0
    escapes = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}
    while i < len(raw):
        ch = raw[i : i + 1]
        if ch == b"\\" and i + 1 < len(raw):
            nxt = raw[i + 1 : i + 2]
            if nxt.isdigit():
                octal = re.match(rb"[0-7]{1,3}", raw[i + 1 : i + 4])
                assert octal is not None
                out.append(int(octal.group(), 8) & 0xFF)
                i += 1 + len(octal.group())
                continue
            out += escapes.get(nxt, nxt)
            i += 2
            continue
        out += ch
        i += 1
    return out.decode("latin-1")


def read_pdf_text(path: Path) -> list[list[str]]:
    """Extract the text lines of each page of a simple text PDF (as written by :func:`write_pdf`).

    Handles the ``Tj``, ``T*`` and ``Td`` operators in plain or Flate-compressed
    content streams; it is not a general PDF parser.

    Args:
        path: The ``.pdf`` file.

    Returns:
        Per content stream (one per page here), its lines.
    """
    data = path.read_bytes()
    pages: list[list[str]] = []
    for match in _STREAM.finditer(data):
        header, body = match.group(1), match.group(2)
        if b"/FlateDecode" in header:
            body = zlib.decompress(body)
        if b"Tj" not in body:
            continue
        lines: list[str] = []
        current: list[str] = []
        for op in _TEXT_OP.finditer(body):
            token = op.group()
            if token.endswith(b"Tj"):
                literal = token[: token.rindex(b")") + 1]
                current.append(_unescape(literal[1:-1]))
            elif current or token == b"T*":
                lines.append("".join(current))
                current = []
        if current:
            lines.append("".join(current))
        pages.append(lines)
    return pages
