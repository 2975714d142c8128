from __future__ import annotations

import io
import random
import re
import zipfile
from datetime import datetime

from PIL import Image, ImageStat

from testkit.remidio_export import build_batch, build_export, remidio_time
from testkit.synthetic import jpeg_segments

_ARCHIVE_NAME = re.compile(r"\d{8}_\d{2}-\d{2}-\d{4}_\d{1,2}\.\d{2}\.\d{2}\.\d{3}_(AM|PM)\.zip")


def test_an_export_has_the_camera_s_shape() -> None:
    export = build_export(random.Random(1), image_size=128, black_capture=True)
    assert _ARCHIVE_NAME.fullmatch(export.file_name)
    assert export.file_name.startswith(export.mrn)
    archive = zipfile.ZipFile(io.BytesIO(export.data))
    infos = archive.infolist()
    assert all(i.flag_bits == 0x0808 and i.compress_type == zipfile.ZIP_DEFLATED for i in infos)
    assert not any(i.is_dir() for i in infos)
    assert archive.testzip() is None
    assert [i.filename for i in infos] == [e.path for e in export.entries]
    assert all(p.startswith(f"{export.folder}/FOP/") for p in (e.path for e in export.images))
    assert [e.path for e in export.entries if e.kind == "pdf"] == [
        p for p in archive.namelist() if p.startswith(f"{export.folder}/REPORTS/")
    ]


def test_entries_are_not_stored_in_capture_order() -> None:
    export = build_export(random.Random(2), image_size=96, images=4)
    times = [e.captured_at for e in export.images]
    assert times != sorted(t for t in times if t)


def test_images_carry_exif_and_a_photoshop_block_and_one_capture_can_be_black() -> None:
    export = build_export(random.Random(3), image_size=128, black_capture=True)
    archive = zipfile.ZipFile(io.BytesIO(export.data))
    for entry in export.images:
        data = archive.read(entry.path)
        markers = [m for m, _ in jpeg_segments(data)]
        assert markers[0] == 0xE0 and 0xE1 in markers and 0xED in markers
        brightness = ImageStat.Stat(Image.open(io.BytesIO(data)).convert("L")).mean[0]
        assert (brightness < 10) == entry.black_capture
    assert export.black_capture is not None


def test_pristine_exports_keep_images_in_the_patient_folder_and_reports_can_be_left_out() -> None:
    export = build_export(random.Random(4), layout="pristine", report_pdf=None, image_size=96)
    assert all(e.path.count("/") == 1 for e in export.entries)
    assert all(e.kind == "image" for e in export.entries)


def test_noon_is_written_as_zero_like_the_camera_does() -> None:
    assert remidio_time(datetime(2025, 1, 31, 12, 2, 16, 99_000)) == "0.02.16.099_PM"
    assert remidio_time(datetime(2025, 1, 31, 9, 5, 0, 1_000)) == "9.05.00.001_AM"


def test_a_batch_holds_every_export_s_folder() -> None:
    exports = [build_export(random.Random(s), image_size=96, images=2) for s in (5, 6)]
    names = zipfile.ZipFile(io.BytesIO(build_batch(exports))).namelist()
    assert {n.split("/")[0] for n in names} == {e.folder for e in exports}
