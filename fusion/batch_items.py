"""The items of a batch run: rows of a CSV manifest, or (fg, bg, mask) files of three folders matched by stem.

A manifest or folder set that cannot be read is bad input (``ValueError`` naming the problem, nothing written);
a row known to be bad before anything is read (a missing input in folder mode, a malformed offset) becomes an
:class:`Item` with ``error`` set, which the run records as failed and goes on.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "Item", "read_folders", "read_manifest"]

#: File extensions the folder mode picks up.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".npy")


@dataclasses.dataclass
class Item:
    """One row of a batch run: its id, its input files and where fg goes on bg.

    ``error`` is set for a row that is known to be bad before anything is read (a missing input in folder mode, a
    malformed offset); such a row is recorded as failed. ``ref`` is the reference image of a manifest's optional
    ``ref`` column (used by ``python -m fusion.compare``; batch inference ignores it).
    """

    id: str
    inputs: dict[str, Path]
    offset: tuple[int, int] | None = None
    error: str | None = None
    ref: Path | None = None


def _check_id(value: str, where: str) -> str:
    if not value or value.startswith(".") or any(c in value for c in '/\\:*?"<>|') or value != value.strip():
        raise ValueError(f"{where}: id {value!r} cannot name a file (no /, \\, leading dot, or surrounding spaces)")
    return value


def _unique(stem: str, taken: set[str]) -> str:
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    return name


def _row_offset(row: Mapping[str, str], default: tuple[int, int] | None) -> tuple[int, int] | None:
    y, x = (row.get("offset_y") or "").strip(), (row.get("offset_x") or "").strip()
    if not y and not x:
        return default
    try:
        return int(y), int(x)
    except ValueError:
        raise ValueError(f"offset_y and offset_x must be two integers, got {y!r} and {x!r}") from None


def read_manifest(
    path: str | os.PathLike[str], *, needs_mask: bool = True, offset: tuple[int, int] | None = None
) -> list[Item]:
    """The items of a CSV manifest.

    The header must hold ``fg``, ``bg`` and (unless ``needs_mask`` is false) ``mask``; ``id``, ``offset_y`` and
    ``offset_x`` are optional, and so is ``ref`` (a reference image, :attr:`Item.ref`). Relative paths resolve against
    the manifest's folder. An empty ``id`` (or no ``id`` column) takes the fg file's stem, made unique with ``-2``,
    ``-3``, ...; ids given in the column must be unique.
    A row with a malformed offset becomes an :class:`Item` with ``error`` set.

    Raises:
        FileNotFoundError: no manifest at ``path``.
        ValueError: unreadable manifest: bad header, missing columns, no rows, an empty path, duplicate or
            unusable ids.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> rows = ["fg,bg,mask,offset_y,offset_x", "a/cat.png,b.png,m.png,,", "c/cat.png,b.png,m.png,4,8"]
        >>> _ = (folder / "items.csv").write_text(chr(10).join(rows))
        >>> [(item.id, item.inputs["fg"].relative_to(folder).as_posix(), item.offset)
        ...  for item in read_manifest(folder / "items.csv")]
        [('cat', 'a/cat.png', None), ('cat-2', 'c/cat.png', (4, 8))]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest={path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"manifest={path} cannot be read: {err}") from None
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
        header = csv.DictReader(io.StringIO(text)).fieldnames
    except csv.Error as err:
        raise ValueError(f"manifest={path} is not valid CSV: {err}") from None
    required = ["fg", "bg", "mask"] if needs_mask else ["fg", "bg"]
    if header is None:
        raise ValueError(f"manifest={path} is empty; expected a header with columns {', '.join(required)}")
    header = [str(h).strip() for h in header]
    if len(set(header)) != len(header) or any(not h for h in header):
        raise ValueError(f"manifest={path} has an empty or repeated column name in its header {header}")
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(
            f"manifest={path} lacks column(s) {', '.join(missing)}; its header is {','.join(header)} "
            f"(expected {','.join(required)}[,id,offset_y,offset_x])"
        )
    if not rows:
        raise ValueError(f"manifest={path} has a header but no rows")
    folder = path.parent.resolve()
    given: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if None in row:
            raise ValueError(f"manifest={path} line {line} has more fields than the header")
        value = (row.get("id") or "").strip()
        if value:
            _check_id(value, f"manifest={path} line {line}")
            if value in given:
                raise ValueError(f"manifest={path} line {line}: id {value!r} repeats line {given[value]}")
            given[value] = line
    taken = set(given)
    items = []
    for line, row in enumerate(rows, start=2):
        row = {str(k).strip(): (v or "").strip() for k, v in row.items()}
        keys = required + (["mask"] if not needs_mask and row.get("mask") else [])
        empty = [k for k in required if not row.get(k)]
        if empty:
            raise ValueError(f"manifest={path} line {line}: empty {', '.join(empty)}")
        inputs = {k: (folder / Path(row[k]).expanduser()).resolve() for k in keys}
        item_id = row.get("id") or ""
        if not item_id:
            item_id = _unique(_check_id(inputs["fg"].stem, f"manifest={path} line {line}"), taken)
            taken.add(item_id)
        error = None
        try:
            item_offset = _row_offset(row, offset)
        except ValueError as err:
            item_offset, error = None, str(err)
        ref = (folder / Path(row["ref"]).expanduser()).resolve() if row.get("ref") else None
        items.append(Item(item_id, inputs, item_offset, error, ref))
    return items


def _by_stem(folder: Path, key: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{key}_dir={folder}: no such folder")
    found: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES and not file.name.startswith("."):
            if file.stem in found:
                raise ValueError(f"{key}_dir={folder} has two files with stem {file.stem!r}: {found[file.stem].name}, "
                                 f"{file.name}")  # fmt: skip
            found[file.stem] = file.resolve()
    return found


def read_folders(folders: Mapping[str, str | os.PathLike[str]], *, offset: tuple[int, int] | None = None) -> list[Item]:
    """The items of ``{"fg": A, "bg": B, "mask": C}`` folders, matched by file stem (``x.png`` with ``x.jpg``).

    Every stem of the fg folder is an item (id: the stem); one that lacks a file in another folder is an item with
    ``error`` set. Files of the other folders without an fg are ignored.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: a folder holds two images of one stem, or the fg folder holds no image.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("fg/x.png", "fg/y.png", "bg/x.jpg", "bg/y.png", "mask/x.png"):
        ...     (root / name).parent.mkdir(exist_ok=True)
        ...     _ = (root / name).write_bytes(b"")
        >>> [(item.id, item.error) for item in read_folders({k: root / k for k in ("fg", "bg", "mask")})]
        [('x', None), ('y', "no file with stem 'y' in mask_dir")]
    """
    files = {key: _by_stem(Path(folder), key) for key, folder in folders.items()}
    if not files["fg"]:
        raise ValueError(f"fg_dir={folders['fg']} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    items = []
    for stem, fg in files["fg"].items():
        _check_id(stem, f"fg_dir={folders['fg']}")
        inputs = {"fg": fg}
        lacking = []
        for key in folders:
            if key != "fg":
                if stem in files[key]:
                    inputs[key] = files[key][stem]
                else:
                    lacking.append(f"{key}_dir")
        error = f"no file with stem {stem!r} in {', '.join(lacking)}" if lacking else None
        items.append(Item(stem, inputs, offset, error))
    return items
