"""Oxford 102 Flowers from its official home, verified and laid out as one folder per class.

`download_flowers102(dest)` fetches the three files torchvision's Flowers102 uses, checks their
MD5s, and writes `dest/<class name>/image_NNNNN.jpg`: the layout that `corolla train`, Keras'
`image_dataset_from_directory` and torchvision's `ImageFolder` read labels from.

Safety, step by step:
- a download goes to NAME.part and is resumed with an HTTP Range request; it becomes NAME only
  once its MD5 matches, and a finished NAME is checked again before every use;
- the archive is read member by member and never extracted by path: a member that is absolute,
  climbs out with `..`, is a link or a device refuses the whole archive; images are written
  under names built here;
- everything is written into `.DEST.tmp-PID` beside `dest` and renamed to `dest` only when
  complete, so a killed run never leaves a folder that looks complete (the next run removes
  its temporary folder).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ..limits import MAX_JSON_BYTES
from ..storage.checkpoint import ensure_writable, remove_stale_temporaries
from ..storage.safefile import read_bounded
from .imagefolder import cache_dir

OFFICIAL_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
URL_ENV = "COROLLA_FLOWERS102_URL"
ARCHIVE, LABELS, SETID = "102flowers.tgz", "imagelabels.mat", "setid.mat"
FILES = {  # name -> MD5, as torchvision's Flowers102 checks them; the small files first
    LABELS: "e0620be6f572b9609742df49c70aed4d",
    SETID: "a5357ecc9cb78c4bef273ce3793fc85c",
    ARCHIVE: "52808999861908f626f3c1f4e79d11fa",
}
SPLITS = ("train", "valid", "test")
# kaggle: the 6,552 / 818 / 819 division the reference trains on (bundled, setid.mat does not hold it);
# setid: the data set's own setid.mat (trnid / valid / tstid: 1,020 / 1,020 / 6,149), torchvision's
SPLIT_SOURCES = ("kaggle", "setid")
SETID_KEYS = {"train": "trnid", "valid": "valid", "test": "tstid"}
MARKER = ".corolla-download.json"  # written last, inside the folder that is renamed into place
ASSETS = Path(__file__).parent.parent / "assets"
IMAGE_MEMBER = re.compile(r"^jpg/image_(\d{5})\.jpg$")
CHUNK = 1 << 20
TIMEOUT_S = 60


class DownloadError(OSError):
    """A download or archive that cannot give the data set: the network, a checksum, a hostile or
    damaged archive, a full disk (exit status 1: the arguments were fine)."""


def downloads_dir() -> Path:
    """Where the downloaded files are kept, so a second layout (another split) fetches nothing."""
    return cache_dir() / "downloads" / "flowers102"


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def class_names() -> list[str]:
    """The 102 class names; index i is label i + 1 of imagelabels.mat."""
    return (ASSETS / "flowers102_classes.txt").read_text().splitlines()


def kaggle_splits() -> dict[int, str]:
    """Image number -> "train" / "valid" / "test" of the Kaggle layout (6,552 / 818 / 819)."""
    splits = {}
    for line in (ASSETS / "flowers102_splits.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, *numbers = line.split()
            splits.update((int(n), name) for n in numbers)
    return splits


def _load_mat(path: Path, keys: list[str]) -> list:
    """The named 1-row arrays of a .mat file, as lists of ints."""
    from scipy.io import loadmat  # scipy is slow to import and only needed here
    from scipy.io.matlab import MatReadError
    try:
        mat = loadmat(path)
        return [[int(v) for v in mat[key].ravel()] for key in keys]
    except (MatReadError, ValueError, TypeError, KeyError) as error:
        raise DownloadError(f"{path} is not the data set's {path.name} ({error!r})") from None


def read_labels(path: Path) -> list[int]:
    """imagelabels.mat -> the label (1..102) of image 1, 2, ..."""
    labels, = _load_mat(path, ["labels"])
    if not labels or not all(1 <= label <= 102 for label in labels):
        raise DownloadError(f"{path} holds labels outside 1..102")
    return labels


def setid_splits(path: Path) -> dict[int, str]:
    """setid.mat -> image number -> split (trnid = train, valid, tstid = test)."""
    columns = _load_mat(path, list(SETID_KEYS.values()))
    return {number: split for split, numbers in zip(SETID_KEYS, columns) for number in numbers}


# -- fetching -----------------------------------------------------------------------------------

def fetch(url: str, path: str | os.PathLike, md5: str, progress: bool = True) -> Path:
    """Download url to path through path.part, resuming a partial .part; verify its MD5."""
    path = Path(path)
    if path.is_file() and md5sum(path) == md5:
        return path  # (a copy altered since it was verified is replaced by a fresh download)
    part = path.with_name(path.name + ".part")
    # the server says a .part is whole when a run was killed between its last byte and the rename
    if not _fetch_part(url, part, progress) and md5sum(part) != md5:
        part.unlink()  # whole but not the file: fetch it all again
        _fetch_part(url, part, progress)
    got = md5sum(part)
    if got != md5:
        part.unlink()
        raise DownloadError(f"{path.name} from {url} has MD5 {got}, expected {md5}: the download was deleted "
                            f"(run again; if it repeats, the file at that address is not the data set's)")
    os.replace(part, path)
    return path


def _fetch_part(url: str, part: Path, progress: bool) -> bool:
    """Append the rest of url to part -> False when the server says part already holds all of it."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # Range Not Satisfiable: nothing after byte `have`
            return False
        raise DownloadError(f"cannot download {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        reason = getattr(reason, "strerror", None) or reason
        raise DownloadError(f"cannot reach {url}: {reason} (no network? --url or ${URL_ENV} "
                            f"can point at a mirror)") from None
    with response:
        if response.status == 206:
            resumed = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not resumed or int(resumed[1]) != have:  # not the range asked for: start again
                part.unlink()
                return _fetch_part(url, part, progress)
            total = int(resumed[2]) if resumed[2] != "*" else None
        else:  # the server ignored the Range: start again from the first byte
            have = 0
            total = int(response.headers["Content-Length"]) if response.headers.get("Content-Length") else None
        size = have
        try:
            with open(part, "ab" if have else "wb") as out, \
                    tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=part.name[:-len(".part")], disable=not progress) as bar:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as error:
                        raise _dropped(url, size, total, error) from None
                    if not block:
                        break
                    try:
                        out.write(block)
                    except OSError as error:
                        raise DownloadError(f"cannot write {part}: {error.strerror or error} "
                                            f"({size:,} bytes kept to resume)") from None
                    size += len(block)
                    bar.update(len(block))
        except DownloadError:
            raise
        except OSError as error:  # opening or closing (flushing) the .part
            raise DownloadError(f"cannot write {part}: {error.strerror or error}") from None
    if total is not None and size != total:
        raise _dropped(url, size, total, None)
    return True


def _dropped(url: str, size: int, total: int | None, error: Exception | None) -> DownloadError:
    of = f" of {total:,}" if total else ""
    why = f" ({error})" if error else ""
    return DownloadError(f"the connection to {url} dropped after {size:,}{of} bytes{why}; "
                         f"run the same command again to resume")


# -- laying out ---------------------------------------------------------------------------------

def _check_member(member: tarfile.TarInfo, archive: Path, tmp: Path) -> None:
    """Refuse a member that could write outside the folder: absolute, `..`, a link, a device."""
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        problem = "an absolute path" if ".." not in parts else "a path that climbs out with '..'"
    elif member.issym() or member.islnk():
        problem = f"a link to {member.linkname!r}"
    elif not (member.isfile() or member.isdir()):
        problem = "a device, FIFO or other special file"
    else:
        problem = None
        data_filter = getattr(tarfile, "data_filter", None)  # Python 3.10.12+ / 3.11.4+: a second opinion
        try:
            if data_filter is not None:
                data_filter(member, str(tmp))
        except tarfile.FilterError as error:
            problem = str(error)
    if problem:
        raise DownloadError(f"{archive} refused: member {name!r} is {problem}; nothing was extracted")


def _copy_member(source, target: Path) -> None:
    with open(target, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def lay_out(archive: Path, tmp: Path, labels: list[int], splits: dict[int, str] | None,
            split: str | None) -> dict[str, int]:
    """Write the archive's images of `split` (None: all) into tmp/<class name>/ -> images per class."""
    names = class_names()
    counts: dict[str, int] = {}
    seen: set[int] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                _check_member(member, archive, tmp)
                match = IMAGE_MEMBER.match(member.name)
                if not member.isfile() or not match:
                    continue  # the jpg/ folder entry
                number = int(match.group(1))
                if not 1 <= number <= len(labels):
                    raise DownloadError(f"{archive}: {member.name} has no label in {LABELS}")
                seen.add(number)
                if split is not None and splits.get(number) != split:
                    continue
                name = names[labels[number - 1] - 1]
                (tmp / name).mkdir(exist_ok=True)
                _copy_member(tar.extractfile(member), tmp / name / f"image_{number:05d}.jpg")
                counts[name] = counts.get(name, 0) + 1
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise DownloadError(f"{archive} is damaged or truncated ({error}); nothing was extracted") from None
    missing = sorted(set(range(1, len(labels) + 1)) - seen)
    if missing:
        raise DownloadError(f"{archive} lacks {len(missing):,} of the {len(labels):,} labelled images "
                            f"(first: image_{missing[0]:05d}.jpg); nothing was extracted")
    return counts


def _marker(dest: Path) -> dict:
    return json.loads(read_bounded(dest / MARKER, MAX_JSON_BYTES, kind="a download's marker"))


def _finished(dest: Path, split: str | None, split_source: str) -> bool:
    """Whether dest is a complete earlier download of the same split; refuse any other content."""
    if not dest.exists():
        return False
    if not dest.is_dir():
        raise ValueError(f"{dest} is a file; give a folder to create")
    try:
        marker = _marker(dest)
        if marker["split"] == split and marker["split_source"] == split_source:
            return True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if any(dest.iterdir()):
        raise ValueError(f"{dest} already exists and is not empty; give a new folder (it is created "
                         f"only once complete)")
    return False


def base_url(url: str | None) -> str:
    url = url or os.environ.get(URL_ENV) or OFFICIAL_URL
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"download URL {url!r} is not allowed: must start with http:// or https://")
    return url if url.endswith("/") else url + "/"


def download_flowers102(dest: str | os.PathLike, split: str | None = None, split_source: str = "kaggle",
                        url: str | None = None, downloads: str | os.PathLike | None = None,
                        progress: bool = True) -> dict:
    """Fetch, verify and lay out Oxford 102 Flowers in dest/<class name>/ -> the marker written
    into dest: split, split_source, images, images_per_class, md5 (plus "existing": True when dest
    already held this download and nothing was done).

    split: None (all 8,189 images), "train", "valid" or "test" of `split_source`."""
    if split not in (None, *SPLITS):
        raise ValueError(f"split {split!r} is not allowed: must be one of {', '.join(SPLITS)} (or None: all)")
    if split_source not in SPLIT_SOURCES:
        raise ValueError(f"split source {split_source!r} is not allowed: must be one of {', '.join(SPLIT_SOURCES)}")
    dest = Path(dest).absolute()
    if _finished(dest, split, split_source):
        return {**_marker(dest), "existing": True}
    ensure_writable(dest.parent)
    base = base_url(url)
    folder = ensure_writable(Path(downloads) if downloads else downloads_dir())

    paths = {name: fetch(base + name, folder / name, md5, progress) for name, md5 in FILES.items()}
    labels = read_labels(paths[LABELS])
    splits = kaggle_splits() if split_source == "kaggle" else setid_splits(paths[SETID])

    remove_stale_temporaries(dest.parent, {dest.name})  # a killed run's half-written folder
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir()
        counts = lay_out(paths[ARCHIVE], tmp, labels, splits, split)
        marker = {"dataset": "flowers102", "split": split, "split_source": split_source,
                  "images": sum(counts.values()), "images_per_class": dict(sorted(counts.items())),
                  "md5": dict(FILES)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if dest.exists():
            dest.rmdir()  # _finished proved it empty
        os.rename(tmp, dest)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, DownloadError):
            raise DownloadError(f"cannot write {dest}: {error.strerror or error}; nothing was kept") from None
        raise
    return marker
