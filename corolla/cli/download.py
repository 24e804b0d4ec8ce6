"""`corolla download flowers102 DIR`: fetch, verify and lay out a data set as one folder per class."""
from __future__ import annotations

from ..data.download import OFFICIAL_URL, SPLIT_SOURCES, SPLITS, URL_ENV, download_flowers102, downloads_dir


def register(sub) -> None:
    p = sub.add_parser("download", help="fetch Oxford 102 Flowers, verify it and lay it out as one folder per class")
    p.add_argument("dataset", choices=["flowers102"], help="the data set (Oxford 102 Flowers)")
    p.add_argument("dir", metavar="DIR", help="folder to create: DIR/<class name>/image_NNNNN.jpg")
    p.add_argument("--split", choices=SPLITS, help="only this split (default: all 8,189 images)")
    p.add_argument("--split-source", choices=SPLIT_SOURCES, default="kaggle",
                   help="kaggle: the 6,552 / 818 / 819 division the reference trains on (default); "
                        "setid: the data set's setid.mat, 1,020 / 1,020 / 6,149 (torchvision's)")
    p.add_argument("--url", help=f"base address of the three files (default ${URL_ENV}, else {OFFICIAL_URL})")
    p.add_argument("--downloads", metavar="FOLDER",
                   help=f"where the downloaded files are kept and resumed (default {downloads_dir()}); "
                        f"files already there are verified and used")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_download)


def run_download(args) -> int:
    result = download_flowers102(args.dir, args.split, args.split_source, args.url, args.downloads,
                                 progress=not args.no_progress)
    what = f"the {args.split} split ({args.split_source})" if args.split else "all images"
    verb = "already holds" if result.get("existing") else "wrote"
    print(f"{args.dir}: {verb} {what}: {result['images']:,} images in {len(result['images_per_class'])} "
          f"class folders\ntrain on it: corolla train {args.dir}")
    return 0
