import os
import shutil
import threading
import warnings

import hostile
import numpy as np
import pytest
import torch
from PIL import Image

from corolla import cli
from corolla.data import imagefolder


def _load(folder, size=hostile.SIZE):
    """load_folder -> (images, names, the warning messages it gave)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, names = imagefolder.load_folder(folder, size)
    return images, names, [str(w.message) for w in caught]


def _load_with_deadline(folder, seconds=60.0):
    """A decoder that blocks (a FIFO opened for reading) fails the test instead of hanging it."""
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=_load(folder)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "loading the folder hung"
    return result["out"]


def test_hostile_corpus_loads_or_skips_and_names_each_file_once(tmp_path):
    folder = tmp_path / "hostile"
    corpus = hostile.build(folder)
    images, names, messages = _load_with_deadline(folder)

    loads = sorted(k for k, e in corpus.items() if e.outcome == "load")
    assert names == loads
    assert images.shape == (len(loads), 3, hostile.SIZE, hostile.SIZE) and images.dtype == torch.uint8
    for name, image in zip(names, images):
        if corpus[name].check is not None:
            corpus[name].check(image)
    # the ordinary path: a photo-like PNG equals decoding it directly
    direct = np.array(Image.open(folder / "noise.png").convert("RGB"))
    assert torch.equal(images[names.index("noise.png")], imagefolder.resize(direct, hostile.SIZE))

    assert len(messages) == 1
    entries = messages[0].split(": ", 1)[1].split("; ")
    skipped = {entry.split(" (", 1)[0]: entry for entry in entries}
    assert len(entries) == len(skipped)  # each named once
    assert sorted(skipped) == sorted(k for k, e in corpus.items() if e.outcome == "skip")
    assert f"skipped {len(skipped)} unreadable" in messages[0]
    for bomb in ("bomb_huge.png", "bomb_over_pil_warning.png", "bomb_over_corolla_limit.png"):
        assert "pixels" in skipped[bomb]  # refused from the header, never decoded
    assert "not a regular file" in skipped["pipe.png"]


def test_pil_limit_is_not_changed_globally():
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)  # PIL's own default


def _three_flowers(folder):
    folder.mkdir()
    for path in sorted(imagefolder.bundled_dir().glob("*.jpg"))[:3]:
        shutil.copy(path, folder / path.name)


def test_the_empty_bundled_image_is_skipped_with_a_warning(tmp_path):
    """The Oxford flowers sample holds an empty image_00303.jpg (the bundled copy leaves it out)."""
    folder = tmp_path / "flowers"
    _three_flowers(folder)
    (folder / "image_00303.jpg").write_bytes(b"")
    images, names, messages = _load(folder, 32)
    assert images.shape == (3, 3, 32, 32) and "image_00303.jpg" not in names
    assert len(messages) == 1 and messages[0].count("image_00303.jpg") == 1


def test_a_folder_without_usable_images_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(imagefolder.DataError, match="no usable image in"):
        imagefolder.load_folder(tmp_path / "empty", 16)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.warns(UserWarning, match="x.jpg"), pytest.raises(imagefolder.DataError, match="no usable image"):
        imagefolder.load_folder(tmp_path / "broken", 16)
    with pytest.raises(imagefolder.DataError, match="does not exist"):
        imagefolder.load_folder(tmp_path / "missing", 16)

    code = cli.main(["train", str(tmp_path / "empty"), "--preset", "tiny", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("corolla: error: no usable image") and err.count("\n") == 1
    assert not (tmp_path / "run" / "latest").exists()


def test_second_load_reads_the_cache_and_still_names_skipped_files(tmp_path, monkeypatch):
    folder = tmp_path / "flowers"
    _three_flowers(folder)
    (folder / "broken.png").write_bytes(b"nope")
    first, names, messages = _load(folder, 32)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is fresh")
    monkeypatch.setattr(imagefolder, "load_image", no_decoding)
    second, names_again, messages_again = _load(folder, 32)
    assert torch.equal(first, second) and names == names_again
    assert messages_again == messages and "broken.png" in messages[0]


def test_the_cache_never_serves_stale_or_torn_data(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    path = folder / "a.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    Image.new("RGB", (8, 8), (0, 0, 0)).save(folder / "b.png")
    before, _, _ = _load(folder)
    assert before[0, :, 0, 0].tolist() == [10, 20, 30]

    Image.new("RGB", (8, 8), (200, 20, 30)).save(path)  # same size in bytes, new content
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))
    after, _, _ = _load(folder)
    assert after[0, :, 0, 0].tolist() == [200, 20, 30]
    assert _load(folder, 8)[0].shape[-1] == 8  # another size is another cache entry

    (folder / "b.png").unlink()
    images, names, _ = _load(folder)
    assert names == ["a.png"] and images.shape[0] == 1

    for cached in imagefolder.cache_dir().glob("*.safetensors"):
        cached.write_bytes(cached.read_bytes()[:100])  # torn cache files are decoded again
    images, names, _ = _load(folder)
    assert names == ["a.png"] and images[0, :, 0, 0].tolist() == [200, 20, 30]


def test_channel_statistics_match_numpy():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 3, 7, 9), dtype=np.uint8))
    mean, variance = imagefolder.channel_statistics(images)
    x = images.numpy().astype(np.float64) / 255.0
    np.testing.assert_allclose(mean.numpy(), x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(variance.numpy(), x.var(axis=(0, 2, 3)), rtol=1e-6)  # population, as Keras
    assert mean.dtype == variance.dtype == torch.float32


def test_crop_cuts_the_central_square_and_squash_keeps_everything():
    wide = np.zeros((16, 48, 3), np.uint8)
    wide[:, :16] = 255  # white left third
    assert imagefolder.resize(wide, 16, crop=True).max() == 0  # the centre third is black
    squashed = imagefolder.resize(wide, 16)
    assert squashed[:, :, :5].min() == 255 and squashed[:, :, 6:].max() == 0


def test_epoch_order_depends_only_on_seed_and_epoch():
    a = imagefolder.epoch_order(10, 3, seed=0, epoch=4)
    assert torch.equal(a, imagefolder.epoch_order(10, 3, seed=0, epoch=4))
    assert not torch.equal(a, imagefolder.epoch_order(10, 3, seed=0, epoch=5))
    assert sorted(a.tolist()) == sorted(list(range(10)) * 3)
