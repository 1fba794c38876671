"""Readers turn real files into raw arrays, and every unusable file into a DataFileError."""

import os
import pickle
import tempfile
from pathlib import Path

import conftest_files as cf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bindspace.data.readers import (
    READERS,
    SUPPORTED_SUFFIXES,
    DataFileError,
    read_audio,
    read_depth,
    read_file,
    read_image,
    read_imu,
    read_thermal,
)


def _keys(writer) -> list[str]:
    """Keys a conftest_files writer produces, known at collection time for parametrize."""
    with tempfile.TemporaryDirectory() as tmp:
        return sorted(writer(Path(tmp)))


SAMPLE_KEYS = _keys(cf.write_sample_files)
CORRUPT_KEYS = _keys(cf.write_corrupt_files)
SUFFIX_CASES = [(modality, suffix) for modality, suffixes in SUPPORTED_SUFFIXES.items() for suffix in suffixes]


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    return cf.write_sample_files(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> dict[str, Path]:
    return cf.write_corrupt_files(tmp_path_factory.mktemp("corrupt"))


def test_every_reader_has_suffixes():
    assert set(READERS) == set(SUPPORTED_SUFFIXES) == {"image", "audio", "depth", "thermal", "imu"}


@pytest.mark.parametrize("key", SAMPLE_KEYS)
def test_read_file_dispatches_to_the_modality_reader(samples, key):
    by_dispatch = read_file(cf.modality_of(key), samples[key])
    direct = READERS[cf.modality_of(key)](samples[key])
    if cf.modality_of(key) == "audio":  # (samples, sample_rate)
        np.testing.assert_array_equal(by_dispatch[0], direct[0])
        assert by_dispatch[1] == direct[1]
    else:
        np.testing.assert_array_equal(by_dispatch, direct)


# ---- image -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["image.png_rgb", "image.png_rgba", "image.png_palette", "image.webp_lossless"])
def test_lossless_colour_images_read_exactly(samples, key):
    image = read_image(samples[key])
    assert image.dtype == np.uint8 and image.shape == (cf.IMAGE_HEIGHT, cf.IMAGE_WIDTH, 3)
    np.testing.assert_array_equal(image, cf.IMAGE_RGB)


@pytest.mark.parametrize("key", ["image.png_gray", "image.png_gray_alpha", "image.png_gray16"])
def test_grayscale_images_become_rgb_with_equal_channels(samples, key):
    # 16-bit gray is written as v * 257, so scaling back to 8 bits must give v exactly (not 255).
    image = read_image(samples[key])
    np.testing.assert_array_equal(image, np.repeat(cf.IMAGE_GRAY[..., None], 3, axis=-1))


@pytest.mark.parametrize("key", ["image.jpg", "image.jpeg_upper"])
def test_jpeg_images_are_close_to_the_original(samples, key):
    image = read_image(samples[key])
    assert image.dtype == np.uint8 and image.shape == (cf.IMAGE_HEIGHT, cf.IMAGE_WIDTH, 3)
    assert np.abs(image.astype(int) - cf.IMAGE_RGB).mean() < 12


# ---- audio -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "rate", "channels"),
    [("audio.wav_stereo_44k", 44_100, 2), ("audio.flac_mono_22k", 22_050, 1)],
)
def test_pcm_audio_reads_as_channels_by_time(samples, key, rate, channels):
    audio, sample_rate = read_audio(samples[key])
    assert sample_rate == rate
    assert audio.dtype == np.float32 and audio.shape == (channels, int(rate * cf.AUDIO_SECONDS))
    np.testing.assert_allclose(audio, cf.audio_signal(rate, channels), atol=1.5 / 32768)


def test_ogg_vorbis_decodes_to_the_same_tone(samples):
    audio, rate = read_audio(samples["audio.ogg_vorbis"])
    want = cf.audio_signal(16_000, 1)
    assert rate == 16_000 and audio.shape == want.shape
    assert np.corrcoef(audio[0], want[0])[0, 1] > 0.99
    assert np.abs(audio).max() <= 1.0


def test_float_audio_slightly_over_full_scale_is_clipped(tmp_path):
    path = tmp_path / "hot.wav"
    cf.sf.write(path, np.full((100, 1), 1.2, np.float32), 8_000, subtype="FLOAT")
    audio, _ = read_audio(path)
    np.testing.assert_array_equal(audio, np.ones((1, 100), np.float32))


# ---- depth -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["depth.npy_m", "depth.npy_chw"])
def test_depth_npy_is_metres_as_stored(samples, key):
    depth = read_depth(samples[key])
    assert depth.dtype == np.float32 and depth.shape == (cf.IMAGE_HEIGHT, cf.IMAGE_WIDTH)
    np.testing.assert_array_equal(depth, cf.DEPTH_M)


def test_depth_png_is_millimetres(samples):
    depth = read_depth(samples["depth.png16_mm"])
    assert depth.dtype == np.float32 and depth.shape == (cf.IMAGE_HEIGHT, cf.IMAGE_WIDTH)
    assert depth[0, 0] == pytest.approx(0.5) and depth[2, 1] == pytest.approx(0.577)
    np.testing.assert_allclose(depth, cf.DEPTH_MM / 1000.0, rtol=1e-6)


# ---- thermal -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "want"),
    [
        ("thermal.png8", cf.THERMAL_8BIT / 255.0),
        ("thermal.png16", cf.THERMAL_16BIT / 65535.0),
        ("thermal.npy_float", cf.THERMAL_FLOAT),
        ("thermal.npy_uint16", cf.THERMAL_16BIT / 65535.0),
    ],
)
def test_thermal_is_scaled_to_unit_range(samples, key, want):
    thermal = read_thermal(samples[key])
    assert thermal.dtype == np.float32 and thermal.shape == (cf.IMAGE_HEIGHT, cf.IMAGE_WIDTH)
    np.testing.assert_allclose(thermal, want, rtol=1e-6)


def test_thermal_jpeg_and_gray_stored_as_rgb(samples, tmp_path):
    np.testing.assert_allclose(read_thermal(samples["thermal.jpg"]), cf.IMAGE_GRAY / 255.0, atol=3 / 255)
    rgb_gray = tmp_path / "gray_rgb.png"
    cf.Image.fromarray(cf.THERMAL_8BIT).convert("RGB").save(rgb_gray)
    np.testing.assert_allclose(read_thermal(rgb_gray), cf.THERMAL_8BIT / 255.0, rtol=1e-6)


def test_thermal_float_within_tolerance_is_clipped(tmp_path):
    path = cf.write_npy(tmp_path / "t.npy", np.array([[-5e-4, 0.5, 1.0005]]))
    np.testing.assert_array_equal(read_thermal(path), np.array([[0.0, 0.5, 1.0]], np.float32))


# ---- imu ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["imu.npy_time_major", "imu.npy_channel_major", "imu.csv_header", "imu.csv_plain"])
def test_imu_reads_as_six_by_time(samples, key):
    imu = read_imu(samples[key])
    assert imu.dtype == np.float32 and imu.shape == (6, cf.IMU_STEPS)
    np.testing.assert_allclose(imu, cf.IMU_TIME_MAJOR.T, rtol=1e-6)


def test_imu_six_by_six_is_time_major(tmp_path):
    square = np.arange(36, dtype=np.float32).reshape(6, 6)
    np.testing.assert_array_equal(read_imu(cf.write_npy(tmp_path / "sq.npy", square)), square.T)


def test_imu_csv_with_bom_quotes_and_blank_lines(tmp_path):
    path = tmp_path / "excel.csv"
    text = '"ax","ay","az","gx","gy","gz"\r\n\r\n1,2,3,4,5,6\r\n 7, 8 ,9,10,11,12\r\n\r\n'
    path.write_bytes(text.encode("utf-8-sig"))
    np.testing.assert_array_equal(read_imu(path), np.arange(1, 13, dtype=np.float32).reshape(2, 6).T)


# ---- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", CORRUPT_KEYS)
def test_unusable_files_raise_data_file_error_naming_the_file(corrupt, key):
    path = corrupt[key]
    with pytest.raises(DataFileError) as info:
        read_file(cf.modality_of(key), path)
    assert path.name in str(info.value)
    assert info.value.path == path and info.value.reason


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("image.missing", "not found"),
        ("image.empty", "empty"),
        ("image.unsupported_suffix", ".png, .jpg, .jpeg, .webp"),
        ("image.truncated_png", "truncated"),
        ("audio.zero_length", "zero length"),
        ("audio.truncated_wav", "truncated"),
        ("audio.int_scale_float", "peak"),
        ("depth.png8", "8-bit"),
        ("depth.npy_int_mm", "floats in metres"),
        ("depth.npy_all_nan", "non-finite"),
        ("depth.npy_negative", "negative"),
        ("depth.npy_shape", "(3, 10, 16)"),
        ("depth.npz_as_npy", "not a .npy"),
        ("thermal.colour_png", "'RGB'"),
        ("thermal.npy_out_of_range", "[0, 1]"),
        ("imu.npy_shape_5", "(50, 5)"),
        ("imu.csv_ragged", "line 2 has 5 columns"),
        ("imu.csv_text_cell", "line 3"),
        ("imu.csv_timestamp_column", "(2, 7)"),
    ],
)
def test_error_messages_say_what_is_wrong(corrupt, key, words):
    with pytest.raises(DataFileError) as info:
        read_file(cf.modality_of(key), corrupt[key])
    assert words in info.value.reason


def test_decoder_errors_are_chained(corrupt):
    with pytest.raises(DataFileError) as info:
        read_image(corrupt["image.truncated_png"])
    assert info.value.__cause__ is not None


def test_wrong_suffix_for_modality_lists_accepted_suffixes(samples):
    with pytest.raises(DataFileError, match=r"accepted: \.npy, \.png"):
        read_file("depth", samples["audio.wav_stereo_44k"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_named_pipe_is_rejected_without_blocking(tmp_path):
    fifo = tmp_path / "stream.csv"
    os.mkfifo(fifo)  # opening this for reading would block until a writer appears
    with pytest.raises(DataFileError, match="not a regular file"):
        read_imu(fifo)


def test_unknown_modality_is_a_plain_value_error(samples):
    with pytest.raises(ValueError, match="known: image, audio, depth, thermal, imu") as info:
        read_file("smell", samples["image.png_rgb"])
    assert not isinstance(info.value, DataFileError)


def test_data_file_error_survives_pickling():
    error = pickle.loads(pickle.dumps(DataFileError("/data/x.png", "broken")))
    assert (error.path, error.reason, str(error)) == (Path("/data/x.png"), "broken", "/data/x.png: broken")


# ---- fuzzing: whatever the bytes, only DataFileError -------------------------------------------

FUZZ = settings(max_examples=30, deadline=None, database=None)
# Real magic numbers get random bytes past each decoder's format sniffing.
MAGIC = [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"RIFF\x00\x01\x00\x00WAVEfmt ",
    b"fLaC",
    b"OggS",
    b"\x93NUMPY\x01\x00",
]


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _read_or_data_file_error(modality: str, path: Path) -> None:
    try:
        read_file(modality, path)
    except DataFileError as err:
        assert path.name in str(err)


@pytest.mark.parametrize(("modality", "suffix"), SUFFIX_CASES)
@FUZZ
@given(magic=st.sampled_from(MAGIC), tail=st.binary(max_size=1024))
def test_random_bytes_raise_only_data_file_error(fuzz_dir, modality, suffix, magic, tail):
    path = fuzz_dir / f"random_{modality}{suffix}"
    path.write_bytes(magic + tail)
    _read_or_data_file_error(modality, path)


@pytest.mark.parametrize("key", SAMPLE_KEYS)
@FUZZ
@given(
    keep=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), max_size=3),
)
def test_damaged_valid_files_raise_only_data_file_error(fuzz_dir, samples, key, keep, flips):
    data = bytearray(samples[key].read_bytes())
    for where, value in flips:
        data[int(where * len(data))] = value
    path = fuzz_dir / f"damaged_{key.replace('.', '_')}{samples[key].suffix}"
    path.write_bytes(bytes(data[: round(keep * len(data))]))
    _read_or_data_file_error(cf.modality_of(key), path)
