"""Class labels of an image folder, and class names or numbers as a user gives them.

Two sources, as the ecosystem has them:
- folders: one sub-folder per class, as torchvision's ImageFolder and Keras'
  image_dataset_from_directory(labels="inferred"). The classes are the first-level sub-folders in
  sorted order (class number i is the i-th); an image deeper down belongs to its first-level folder.
- a CSV file (--labels FILE) with a header row: an `image` column (the file name, or its path
  relative to the data folder), and `label` (a whole class number), `class_name`, or both; other
  columns are ignored. With `label`, classes are ordered by that number and named by `class_name`
  (or by the number); with `class_name` alone they are sorted by name. Rows of images that are not
  in the folder are ignored, so one CSV can label every split of a data set.
A class without images in the folder is left out (its embedding could not be trained).

Labels are derived from the images' relative paths, which the data cache keeps beside the pixels,
so a cached folder is not decoded again and an edited CSV is never served stale.
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path, PurePath

import torch

from ..limits import MAX_CLASS_NAME, MAX_CLASSES, MAX_LABELS_BYTES, is_class_name, short
from ..storage.safefile import read_bounded
from .imagefolder import DataError

IMAGE_COLUMN, NUMBER_COLUMN, NAME_COLUMN = "image", "label", "class_name"


@dataclass(frozen=True)
class Labels:
    classes: tuple[str, ...]  # class names; class number i is classes[i]
    numbers: torch.Tensor     # (N,) int64: the class number of each image, in load_folder's order

    def counts(self) -> tuple[int, ...]:
        """Images per class."""
        return tuple(torch.bincount(self.numbers, minlength=len(self.classes)).tolist())

    def key(self) -> str:
        """A digest of the classes and every image's class, to know the same labels again."""
        digest = hashlib.sha256("\n".join(self.classes).encode())
        digest.update(self.numbers.numpy().tobytes())
        return digest.hexdigest()[:24]


def _labels(image_classes: list[str], classes: tuple[str, ...] | None, order: list[str]) -> Labels:
    """Labels from each image's class name. `classes` fixes the class list (a validation folder
    must use the training run's); otherwise it is `order` restricted to the classes present."""
    if classes is None:
        present = set(image_classes)
        classes = tuple(name for name in order if name in present)
        bad = next((name for name in classes if not is_class_name(name)), None)
        if bad is not None:
            raise DataError(f"class name {short(bad)} is not usable: a class name is 1 to {MAX_CLASS_NAME} "
                            f"printable characters, not blank")
        if len(classes) > MAX_CLASSES:
            raise DataError(f"{len(classes):,} classes; corolla takes at most {MAX_CLASSES:,}")
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({name for name in image_classes if name not in index})
    if unknown:
        raise DataError(f"{len(unknown)} class(es) of these images are not the model's "
                        f"({', '.join(map(short, unknown[:3]))}{', ...' if len(unknown) > 3 else ''}); its classes "
                        f"are {', '.join(map(short, classes[:3]))}{', ...' if len(classes) > 3 else ''}")
    return Labels(tuple(classes), torch.tensor([index[name] for name in image_classes], dtype=torch.long))


def from_folders(names: list[str], root: str | os.PathLike, classes: tuple[str, ...] | None = None) -> Labels:
    """Labels of images named by their paths relative to `root` (load_folder's names): each
    image's class is its first-level sub-folder."""
    loose = [name for name in names if len(PurePath(name).parts) < 2]
    if loose:
        raise DataError(f"{len(loose)} image(s) lie directly in {str(root)!r}, outside any class sub-folder "
                        f"(e.g. {short(loose[0], 80)}): put each class's images in {str(root)!r}/<class name>/, "
                        f"or give their classes with --labels FILE")
    image_classes = [PurePath(name).parts[0] for name in names]
    return _labels(image_classes, classes, sorted(set(image_classes)))


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        text = read_bounded(path, MAX_LABELS_BYTES, kind="a labels file").decode("utf-8-sig")  # a spreadsheet's BOM
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        header = [name.strip() for name in reader.fieldnames or []]
    except OSError as error:
        raise DataError(f"labels file {str(path)!r}: not readable ({error.strerror or error})") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"labels file {str(path)!r}: not a UTF-8 CSV file ({str(error)[:100]})") from None
    rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in row.items()}
            for row in rows]
    return header, rows


def from_csv(path: str | os.PathLike, names: list[str], classes: tuple[str, ...] | None = None) -> Labels:
    """Labels of images named by their relative paths (load_folder's names) from a CSV file (the
    module docstring gives its columns)."""
    path = Path(path)
    header, rows = _read_csv(path)
    if IMAGE_COLUMN not in header or not {NUMBER_COLUMN, NAME_COLUMN} & set(header):
        raise DataError(f"labels file {str(path)!r} needs a header row with an {IMAGE_COLUMN!r} column and a "
                        f"{NUMBER_COLUMN!r} (class number) or {NAME_COLUMN!r} column, e.g. image,label or "
                        f"image,class_name; it has {short(','.join(header), 80)}")
    # each row -> (image, class name), and the class names in class-number order
    by_image: dict[str, str] = {}
    name_of: dict[int, str] = {}
    number_of: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        image = row.get(IMAGE_COLUMN, "")
        if not image:
            raise DataError(f"{path}:{line}: no image name")
        name = row.get(NAME_COLUMN, "")
        if NUMBER_COLUMN in header:
            text = row.get(NUMBER_COLUMN, "")
            try:
                number = int(text)
            except ValueError:
                raise DataError(f"{path}:{line}: label {short(text)} is not a whole class number") from None
            name = name or text
            if name_of.setdefault(number, name) != name or number_of.setdefault(name, number) != number:
                raise DataError(f"{path}:{line}: class {number} is named {short(name)} here and "
                                f"{short(name_of[number])} before (or that name has another number)")
        elif not name:
            raise DataError(f"{path}:{line}: no class name")
        if by_image.setdefault(image, name) != name:
            raise DataError(f"{path}:{line}: image {short(image)} is given two classes")
    order = [name_of[n] for n in sorted(name_of)] if NUMBER_COLUMN in header else sorted(set(by_image.values()))

    image_classes, missing, by_file_name = [], [], {}
    for name in names:
        relative = PurePath(name).as_posix()
        file_name = PurePath(name).name
        if relative in by_image:
            image_classes.append(by_image[relative])
        elif file_name in by_image:
            if by_file_name.setdefault(file_name, relative) != relative:
                raise DataError(f"labels file {str(path)!r} names {short(file_name)}, and the folder holds two images "
                                f"of that name ({short(by_file_name[file_name], 80)}, {short(relative, 80)}): "
                                f"give their paths relative to the data folder")
            image_classes.append(by_image[file_name])
        else:
            missing.append(relative)
    if missing:
        raise DataError(f"{len(missing)} image(s) have no row in labels file {str(path)!r} "
                        f"(e.g. {short(missing[0], 80)}); every training image needs a class")
    return _labels(image_classes, classes, order)


def read(names: list[str], root: str | os.PathLike, csv_file: str | os.PathLike | None = None,
         classes: tuple[str, ...] | None = None) -> Labels:
    """The labels of load_folder(root)'s images: from `csv_file` when given, else from sub-folders."""
    if csv_file is not None:
        return from_csv(csv_file, names, classes)
    return from_folders(names, root, classes)


def class_number(classes: tuple[str, ...] | list[str], wanted: int | str) -> int:
    """A class as a user gives it (its name, any case, or its number) -> its number. An unknown
    name is a ValueError that suggests the closest names."""
    if isinstance(wanted, bool) or not isinstance(wanted, (int, str)):
        raise ValueError(f"a class is a name or a number, not {short(wanted)}")
    if isinstance(wanted, str):
        text = wanted.strip()
        if text in classes:  # exact first: a class may be named "12"
            return classes.index(text)
        folded = [name.casefold() for name in classes]
        if folded.count(text.casefold()) == 1:
            return folded.index(text.casefold())
        if not (text.isascii() and text.isdigit()):  # int() refuses "²", which isdigit() accepts
            close = difflib.get_close_matches(text.casefold(), folded, n=3, cutoff=0.5)
            hint = (f"closest: {', '.join(repr(classes[folded.index(c)]) for c in close)}" if close
                    else "no name is close")
            raise ValueError(f"unknown class {short(text)}; {hint} (`corolla classes` lists all {len(classes)})")
        wanted = int(text)
    if not 0 <= wanted < len(classes):
        raise ValueError(f"class number {wanted} is not one of this model's: 0 to {len(classes) - 1}")
    return wanted
