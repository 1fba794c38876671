"""Issue 14, part 6: the readers decode bytes held in memory exactly as they decode files, so shards
are read without a temporary file per sample."""

from __future__ import annotations

import io
from pathlib import Path

import conftest_files as cf
import numpy as np
import pytest

from bindspace.data.readers import read_file
from bindspace.data.shards import materialize
from bindspace.errors import DataFileError
from bindspace.modalities import get_modality
from bindspace.modalities.files import InMemoryFile


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    return cf.write_sample_files(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> dict[str, Path]:
    return cf.write_corrupt_files(tmp_path_factory.mktemp("corrupt"))


def same(a, b) -> bool:
    if isinstance(a, tuple):
        return all(same(x, y) for x, y in zip(a, b, strict=True))
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_bytes_decode_exactly_as_the_file(samples):
    for key, path in samples.items():
        modality = cf.modality_of(key)
        from_file = read_file(modality, path)
        from_bytes = get_modality(modality).decode(path.name, path.read_bytes())
        assert same(from_file, from_bytes), key


def test_bad_bytes_fail_as_the_bad_file_does_naming_the_member(corrupt):
    for key, path in corrupt.items():
        modality = cf.modality_of(key)
        if not path.is_file():
            continue  # a missing path or a folder: nothing to hold in memory
        try:
            read_file(modality, path)
        except DataFileError:
            pass
        else:
            continue  # a file the readers accept (e.g. a clipped float wav): not a corruption case here
        with pytest.raises(DataFileError) as err:
            get_modality(modality).decode(f"shard-000001:{path.name}", path.read_bytes())
        assert str(err.value).startswith(f"shard-000001:{path.name}: "), (key, str(err.value))


def test_a_forged_npy_header_is_refused_before_allocating():
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    data = header.getvalue() + b"\x00" * 64  # the magic and a header promising 4 TB, then 64 bytes
    with pytest.raises(DataFileError, match="declares 4000000000000 bytes of data, the file holds 64"):
        get_modality("depth").decode("forged.npy", data)


def test_shard_members_stay_in_memory(tmp_path):
    fields = {"json": b'{"id": "a", "label": "x"}', "image.png": b"not even a png"}
    sample = materialize("000001", fields, source=tmp_path / "shard-000001.tar")
    member = sample.values["image"]
    assert isinstance(member, InMemoryFile) and member.name == "000001.image.png" and member.data == fields["image.png"]
    assert not any(tmp_path.iterdir())  # nothing written
