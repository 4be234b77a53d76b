"""`selva batch LIST.csv`: the CSV list format, read into `selva.batch.Item`s.

One row per clip. The columns (any order; a header row names them):

    video                       path, relative to the CSV's folder (required)
    prompt, negative, gain      stem 1 (prompt_1, negative_1, gain_1 are the same columns)
    prompt_k, negative_k, gain_k   stem k, for k = 2 to 4
    seed, start, duration       as the options of the same names

A row with one prompt and no gain is one generation; a row with more prompts (or a gain) makes
stems, the files `selva generate VIDEO --prompt A --prompt B` writes. Every value has its own
cell, so prompts may hold commas (quoted, as spreadsheets write them). Empty cells take the
matching option (stem k's negative and gain: the k-th --negative and --gain), and a row with no
prompt at all takes every --prompt. Every row is checked here, before any model loads: an error
names the line. So is the file itself: UTF-8 only, one line per row (a quote left open would take
the following rows into its cell), no more cells than columns. A row repeating an earlier one
(same video, prompts and settings) is reported and runs once.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import io
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from selva import spec
from selva.batch import Item, Sound, nth, option_settings, option_sound, sound_fields
from selva.cli_options import seconds_up_to, seed_arg, start_arg, stem_gain_arg
from selva.spec import InputError

log = logging.getLogger(__name__)

# -- columns --------------------------------------------------------------------------------------

# Stem k's cells: (prompt, negative, gain) for stem 1, then (prompt_k, negative_k, gain_k). One
# column per value, never several values in a cell, so prompts may hold commas and a spreadsheet
# edits each on its own.
STEM_COLUMNS = [("prompt", "negative", "gain")] + [
    (f"prompt_{k}", f"negative_{k}", f"gain_{k}") for k in range(2, spec.MAX_STEMS + 1)
]
SPELLINGS = {"prompt_1": "prompt", "negative_1": "negative", "gain_1": "gain"}  # stem 1's other names
CSV_COLUMNS = ["video", *(c for columns in STEM_COLUMNS for c in columns), "seed", "start", "duration"]
ALLOWED = (
    f"video, prompt, negative, gain, prompt_k, negative_k, gain_k (k = 2 to {spec.MAX_STEMS}), "
    "seed, start, duration"
)


def items_from_csv(path: Path, args: argparse.Namespace) -> list[Item]:
    """Every row checked before any model loads: a typo should not cost a model load."""
    defaults = option_sound(args)
    lines = _rows(path, _text(path))
    header_line, header_cells = next(lines, (1, []))
    header = _header(f"{path} line {header_line}", header_cells)
    rows = [(_cells(path, header, cells, line), line) for line, cells in lines]
    # A row's duration is checked against this run's cap now, before any model loads.
    capped = seconds_up_to(args.max_duration)
    items = []
    for row, line in rows:
        if not any(row.values()):
            continue  # spreadsheets leave empty rows at the end
        where = f"{path} line {line}"
        if not row.get("video"):
            raise InputError(f"{where}: the video cell is empty")
        settings = option_settings(args)
        for column, convert in (("seed", seed_arg), ("start", start_arg), ("duration", capped)):
            if row.get(column):
                settings[column] = _convert(convert, row[column], f"{where}: {column}")
        video = Path(row["video"]).expanduser()
        sound = sound_fields(_row_sound(row, defaults, args, where), args, where)
        items.append((line, Item(path.parent / video, where=f"{where} ({video.name})", **sound, **settings)))
    if not items:
        raise InputError(f"{path} has no rows")
    return _once(path, items)


# -- reading --------------------------------------------------------------------------------------

SAVE_AS_UTF8 = "save it as UTF-8 (in Excel: Save As, CSV UTF-8)"


def _text(path: Path) -> str:
    """The file as text, or an error naming the line where it stops being UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    # UTF-16 (Excel's "Unicode text", PowerShell's default) puts a NUL byte beside every ASCII
    # character; UTF-8 would decode those NULs as characters, so they are looked for first.
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in data:
        line = data[: max(data.find(b"\x00"), 0)].count(b"\n") + 1
        raise InputError(f"{path} line {line} is UTF-16 text (or holds NUL bytes); {SAVE_AS_UTF8}")
    try:
        return data.decode("utf-8-sig")  # -sig: Excel writes a BOM
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        byte = data[exc.start]
        raise InputError(
            f"{path} line {line} is not UTF-8 text (byte 0x{byte:02x}); {SAVE_AS_UTF8}"
        ) from None


def _rows(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """(line, cells) per row. A row must sit on one line: a quote left open would otherwise take
    every following row into one cell, silently."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 1  # where the next row starts: reader.line_num is where the last one ended
    try:
        for cells in reader:
            if reader.line_num > line:
                raise InputError(
                    f"{path} line {line}: a quote is not closed on its line (the cell runs on to line "
                    f"{reader.line_num}); close it, or remove the stray quote"
                )
            yield line, cells
            line = reader.line_num + 1
    except csv.Error as exc:
        if "end of data" in str(exc):  # strict mode's word for a quote open at the end of the file
            raise InputError(
                f"{path} line {line}: a quote is not closed (the cell runs to the end of the file); "
                "close it, or remove the stray quote"
            ) from None
        if "expected after" in str(exc):  # text after a closing quote: `"dog" barking`
            raise InputError(
                f"{path} line {line}: a quoted cell must end at its closing quote ({exc}); quote the "
                'whole cell and double the quotes inside it: """dog"" barking"'
            ) from None
        raise InputError(f"{path} line {line} cannot be read as CSV: {exc}") from None


def _once(path: Path, items: list[tuple[int, Item]]) -> list[Item]:
    """The items without repeated rows, each repeat reported: the same clip twice is a pasting slip.

    A repeat has the same video, prompts and settings (an empty seed included): it would only make
    the same files again, or a second random take nobody named (--samples is for takes).
    """
    first: dict[tuple, int] = {}
    kept = []
    for line, item in items:
        assert item.video is not None  # a row always names its video
        key = (
            item.video.resolve(),
            item.prompt,
            item.negative,
            item.seed,
            item.start,
            item.duration,
            item.stems,
        )
        if key in first:
            log.warning(
                "%s line %d repeats line %d (same video, prompts and settings); it runs once: "
                "for several takes give each row its own seed, or use --samples",
                path, line, first[key],
            )  # fmt: skip
            continue
        first[key] = line
        kept.append(item)
    return kept


# -- rows -----------------------------------------------------------------------------------------


def _header(where: str, cells: list[str]) -> list[str]:
    # A nameless column (a trailing comma) is allowed while its cells stay empty; see _cells.
    names = [SPELLINGS.get(c.strip(), c.strip()) for c in cells]
    if not {"video", "prompt"} <= set(names):
        have = ", ".join(n for n in names if n) or "none"
        raise InputError(f"{where}: the header needs the columns video and prompt; it has: {have}")
    twice = sorted({n for n in names if n and names.count(n) > 1})
    if twice:
        also = " (prompt_1, negative_1 and gain_1 are prompt, negative and gain)"
        raise InputError(f"{where}: column(s) {', '.join(twice)} given twice" + also)
    unknown = [n for n in names if n and n not in CSV_COLUMNS]
    if unknown:
        numbered = [n for n in unknown if re.fullmatch(r"(prompt|negative|gain)_\d+", n)]
        if numbered:
            raise InputError(
                f"{where}: column(s) {', '.join(numbered)}: a row makes at most {spec.MAX_STEMS} stems "
                f"(prompt, prompt_2 ... prompt_{spec.MAX_STEMS}, each with its negative_k and gain_k)"
            )
        raise InputError(f"{where}: unknown column(s) {', '.join(unknown)}; allowed: {ALLOWED}")
    return names


def _cells(path: Path, header: list[str], cells: list[str], line: int) -> dict[str, str]:
    named = list(zip(header, cells, strict=False))
    spare = cells[len(header) :] + [cell for name, cell in named if not name]
    if any(cell.strip() for cell in spare):
        raise InputError(f"{path} line {line} has more cells than columns; quote texts with commas")
    return {name: cell.strip() for name, cell in named if name}


def _row_sound(row: dict[str, str], defaults: Sound, args: argparse.Namespace, where: str) -> Sound:
    """A row's stems: its own prompts, or with none every --prompt; empty cells take the options."""
    cells = [tuple(row.get(c, "") for c in columns) for columns in STEM_COLUMNS]
    named = [k for k, (prompt, _, _) in enumerate(cells) if prompt]
    if named and named[-1] + 1 != len(named):  # a gap: stem numbers would not match column numbers
        gap = next(k for k in range(len(cells)) if k not in named)
        raise InputError(
            f"{where}: {STEM_COLUMNS[named[-1]][0]} is filled but {STEM_COLUMNS[gap][0]} is empty; "
            "fill the prompts from the left"
        )
    prompts = [cells[k][0] for k in named] or [p for p, _, _ in defaults]
    if not prompts:
        raise InputError(f"{where}: the prompt cell is empty (or give a default with --prompt)")
    option_negatives, option_gains = args.negative or [], args.gain or []
    sound = []
    for k, (_, negative, gain) in enumerate(cells):
        if k >= len(prompts):
            orphan = [c for c, value in zip(STEM_COLUMNS[k][1:], (negative, gain), strict=True) if value]
            if orphan:
                raise InputError(f"{where}: {orphan[0]} is filled but {STEM_COLUMNS[k][0]} is empty")
            continue
        if gain:
            value: float | None = _convert(stem_gain_arg, gain, f"{where}: {STEM_COLUMNS[k][2]}")
        else:
            value = nth(option_gains, k, None)
        sound.append((prompts[k], negative or nth(option_negatives, k, ""), value))
    return sound


def _convert(convert: Callable[[str], object], text: str, what: str):
    try:
        return convert(text)
    except argparse.ArgumentTypeError as exc:
        raise InputError(f"{what} {exc}") from None
