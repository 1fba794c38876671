"""Writers of real data files, valid and broken, for tests that read files from disk.

Plain importable functions (``from conftest_files import write_sample_files``), not fixtures, so any
test module can call them with its own ``tmp_path``. Keys of the returned dicts are
``"<modality>.<variant>"``; ``modality_of(key)`` gives the modality. The module-level arrays are the
exact contents written, so tests can check values after reading.
"""

from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

IMAGE_HEIGHT, IMAGE_WIDTH = 10, 16  # not square, so a transposed read is caught
_ROWS, _COLS = np.mgrid[0:IMAGE_HEIGHT, 0:IMAGE_WIDTH]
IMAGE_RGB = np.stack([_COLS * 15, _ROWS * 25, 255 - _COLS * 10], axis=-1).astype(np.uint8)  # (H, W, 3)
IMAGE_GRAY = (_ROWS * 16 + _COLS).astype(np.uint8)  # (H, W)

DEPTH_MM = (500 + 37 * _ROWS + 3 * _COLS).astype(np.uint16)  # (H, W) millimetres; 0.5 m .. ~0.88 m
DEPTH_M = (np.linspace(0.0, 12.5, IMAGE_HEIGHT * IMAGE_WIDTH).reshape(IMAGE_HEIGHT, IMAGE_WIDTH)).astype(np.float32)
THERMAL_8BIT = (_ROWS * 20 + _COLS).astype(np.uint8)  # (H, W), read back as / 255
THERMAL_16BIT = (_ROWS * 6000 + _COLS * 100).astype(np.uint16)  # (H, W), read back as / 65535
THERMAL_FLOAT = (THERMAL_8BIT / 255.0).astype(np.float32)

IMU_STEPS = 50
IMU_TIME_MAJOR = np.stack(  # (T, 6): accelerometer xyz (m/s^2), gyroscope xyz (rad/s)
    [np.sin(np.arange(IMU_STEPS) * 0.1 * (axis + 1)) * (9.81 if axis < 3 else 1.0) for axis in range(6)],
    axis=1,
).astype(np.float32)
IMU_HEADER = "acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z"

AUDIO_SECONDS = 0.1


def modality_of(key: str) -> str:
    """``"depth.png16_mm"`` -> ``"depth"``."""
    return key.split(".", 1)[0]


def audio_signal(samplerate: int, channels: int, seconds: float = AUDIO_SECONDS) -> np.ndarray:
    """Deterministic float32 (C, T) test tone in [-0.8, 0.8], a different pitch per channel."""
    t = np.arange(int(samplerate * seconds)) / samplerate
    return np.stack([0.8 * np.sin(2 * np.pi * 220 * (c + 1) * t) for c in range(channels)]).astype(np.float32)


def write_audio(path: Path, samplerate: int, channels: int, subtype: str | None = None) -> np.ndarray:
    """Write ``audio_signal`` to ``path`` (format from the suffix); return the (C, T) signal written."""
    signal = audio_signal(samplerate, channels)
    sf.write(path, signal.T, samplerate, subtype=subtype)
    return signal


def write_image(path: Path, mode: str = "RGB", **save_args) -> Path:
    """Write the test pattern in PIL ``mode`` (RGB, RGBA, L, P, I;16 ...); format from the suffix."""
    if mode == "I;16":
        img = Image.fromarray(IMAGE_GRAY.astype(np.uint16) * 257)
    elif mode in ("L", "LA"):
        img = Image.fromarray(IMAGE_GRAY).convert(mode)
    elif mode == "P":  # an adaptive palette holds all 160 colours, so the round trip is exact
        img = Image.fromarray(IMAGE_RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    else:
        img = Image.fromarray(IMAGE_RGB).convert(mode)
    img.save(path, **save_args)
    return path


def write_gray_png(path: Path, values: np.ndarray) -> Path:
    """Write a uint8 or uint16 (H, W) array as an 8- or 16-bit grayscale PNG."""
    Image.fromarray(values).save(path)
    return path


def write_imu_csv(path: Path, time_major: np.ndarray, header: bool) -> Path:
    """Write (T, 6) IMU rows as CSV, optionally under a header row of column names."""
    lines = [IMU_HEADER] if header else []
    lines += [",".join(f"{v:.9g}" for v in row) for row in time_major]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def write_truncated(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst``."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def write_sample_files(directory: Path) -> dict[str, Path]:
    """Write one valid file of every supported kind into ``directory``.

    Returns:
        ``"<modality>.<variant>"`` -> path, e.g. ``"image.png_rgba"``, ``"depth.png16_mm"``.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "image.png_rgb": write_image(d / "rgb.png"),
        "image.png_rgba": write_image(d / "rgba.png", "RGBA"),
        "image.png_gray": write_image(d / "gray.png", "L"),
        "image.png_gray_alpha": write_image(d / "gray_alpha.png", "LA"),
        "image.png_palette": write_image(d / "palette.png", "P"),
        "image.png_gray16": write_image(d / "gray16.png", "I;16"),
        "image.jpg": write_image(d / "photo.jpg", quality=95),
        "image.jpeg_upper": write_image(d / "PHOTO.JPEG", quality=95),
        "image.webp_lossless": write_image(d / "lossless.webp", lossless=True),
        "depth.npy_m": write_npy(d / "depth_m.npy", DEPTH_M),
        "depth.npy_chw": write_npy(d / "depth_chw.npy", DEPTH_M[None].astype(np.float64)),
        "depth.png16_mm": write_gray_png(d / "depth_mm.png", DEPTH_MM),
        "thermal.png8": write_gray_png(d / "thermal8.png", THERMAL_8BIT),
        "thermal.png16": write_gray_png(d / "thermal16.png", THERMAL_16BIT),
        "thermal.jpg": write_image(d / "thermal.jpg", "L", quality=100),
        "thermal.npy_float": write_npy(d / "thermal_float.npy", THERMAL_FLOAT),
        "thermal.npy_uint16": write_npy(d / "thermal_u16.npy", THERMAL_16BIT),
        "imu.npy_time_major": write_npy(d / "imu_t6.npy", IMU_TIME_MAJOR),
        "imu.npy_channel_major": write_npy(d / "imu_6t.npy", IMU_TIME_MAJOR.T.astype(np.float64)),
        "imu.csv_header": write_imu_csv(d / "imu_header.csv", IMU_TIME_MAJOR, header=True),
        "imu.csv_plain": write_imu_csv(d / "imu_plain.csv", IMU_TIME_MAJOR, header=False),
    }
    for key, name, rate, channels, subtype in [
        ("audio.wav_stereo_44k", "stereo.wav", 44_100, 2, "PCM_16"),
        ("audio.flac_mono_22k", "mono.flac", 22_050, 1, "PCM_16"),
        ("audio.ogg_vorbis", "vorbis.ogg", 16_000, 1, "VORBIS"),
    ]:
        write_audio(d / name, rate, channels, subtype)
        files[key] = d / name
    return files


def write_one_per_modality(directory: Path, stem: str = "sample") -> dict[str, Path]:
    """Write one small valid file per file-backed modality, named ``<stem>.<suffix>``.

    Returns:
        modality -> path (image, audio, depth, thermal, imu).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    audio = d / f"{stem}.wav"
    write_audio(audio, 16_000, 1, "PCM_16")
    return {
        "image": write_image(d / f"{stem}.png"),
        "audio": audio,
        "depth": write_gray_png(d / f"{stem}_depth.png", DEPTH_MM),
        "thermal": write_gray_png(d / f"{stem}_thermal.png", THERMAL_8BIT),
        "imu": write_npy(d / f"{stem}_imu.npy", IMU_TIME_MAJOR),
    }


def write_corrupt_files(directory: Path) -> dict[str, Path]:
    """Write files every reader must reject with a DataFileError (``"<modality>.<problem>"`` -> path).

    ``*.missing`` paths are deliberately not created.
    """
    d = Path(directory)
    good = write_sample_files(d / "good")
    files = {
        "image.missing": d / "missing.png",
        "image.empty": _write_bytes(d / "empty.png", b""),
        "image.text_as_png": _write_bytes(d / "text.png", b"this is not a picture\n"),
        "image.truncated_png": write_truncated(good["image.png_rgb"], d / "cut.png"),
        "image.truncated_jpg": write_truncated(good["image.jpg"], d / "cut.jpg", 0.7),
        "image.unsupported_suffix": write_image(d / "picture.bmp"),
        "image.directory": _mkdir(d / "folder.png"),
        "audio.empty": _write_bytes(d / "empty.wav", b""),
        "audio.text_as_wav": _write_bytes(d / "text.wav", b"RIFF but not really\n"),
        "audio.zero_length": _write_zero_length_wav(d / "silence0.wav"),
        "audio.truncated_wav": write_truncated(good["audio.wav_stereo_44k"], d / "cut.wav"),
        "audio.truncated_flac": write_truncated(good["audio.flac_mono_22k"], d / "cut.flac", 0.6),
        "audio.int_scale_float": _write_float_wav(d / "loud.wav", 1000.0),
        "audio.nan_float": _write_float_wav(d / "nan.wav", np.nan),
        "depth.png8": write_gray_png(d / "depth8.png", IMAGE_GRAY),
        "depth.npy_int_mm": write_npy(d / "depth_int.npy", DEPTH_MM),
        "depth.npy_nan": write_npy(d / "depth_nan.npy", np.where(_ROWS == 3, np.nan, DEPTH_M)),
        "depth.npy_all_nan": write_npy(d / "depth_allnan.npy", np.full((4, 4), np.nan)),
        "depth.npy_negative": write_npy(d / "depth_neg.npy", DEPTH_M - 1.0),
        "depth.npy_shape": write_npy(d / "depth_3ch.npy", np.stack([DEPTH_M] * 3)),
        "depth.npy_object": _write_object_npy(d / "depth_obj.npy"),
        "depth.npz_as_npy": _write_npz_as_npy(d / "depth_zip.npy"),
        "depth.truncated_npy": write_truncated(good["depth.npy_m"], d / "depth_cut.npy"),
        "depth.png_as_npy": _write_bytes(d / "depth_png.npy", good["depth.png16_mm"].read_bytes()),
        "thermal.colour_png": write_image(d / "thermal_colour.png"),
        "thermal.npy_out_of_range": write_npy(d / "thermal_hot.npy", THERMAL_FLOAT * 300.0),
        "thermal.npy_inf": write_npy(d / "thermal_inf.npy", np.where(_ROWS == 0, np.inf, THERMAL_FLOAT)),
        "thermal.npy_int64": write_npy(d / "thermal_i64.npy", THERMAL_8BIT.astype(np.int64)),
        "thermal.truncated_png": write_truncated(good["thermal.png16"], d / "thermal_cut.png"),
        "imu.npy_shape_5": write_npy(d / "imu5.npy", IMU_TIME_MAJOR[:, :5]),
        "imu.npy_3d": write_npy(d / "imu3d.npy", IMU_TIME_MAJOR[None]),
        "imu.npy_no_steps": write_npy(d / "imu0.npy", np.zeros((0, 6), np.float32)),
        "imu.npy_nan": write_npy(d / "imu_nan.npy", np.where(_ROWS[:6, :6] == 1, np.nan, 0.0)),
        "imu.npy_strings": write_npy(d / "imu_str.npy", np.full((10, 6), "x")),
        "imu.csv_ragged": _write_text(d / "ragged.csv", "1,2,3,4,5,6\n1,2,3,4,5\n"),
        "imu.csv_text_cell": _write_text(d / "words.csv", f"{IMU_HEADER}\n1,2,3,4,5,6\n1,2,three,4,5,6\n"),
        "imu.csv_header_only": _write_text(d / "header.csv", IMU_HEADER + "\n"),
        "imu.csv_timestamp_column": _write_text(d / "stamped.csv", "0.0,1,2,3,4,5,6\n0.1,1,2,3,4,5,6\n"),
        "imu.csv_binary": _write_bytes(d / "binary.csv", bytes(range(256)) * 4),
    }
    return files


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_zero_length_wav(path: Path) -> Path:
    sf.write(path, np.zeros((0, 1), np.float32), 16_000, subtype="PCM_16")
    return path


def _write_float_wav(path: Path, value: float) -> Path:
    """A 32-bit float WAV whose samples are all ``value`` (float WAVs are not clipped on write)."""
    sf.write(path, np.full((800, 1), value, np.float32), 8_000, subtype="FLOAT")
    return path


def _write_object_npy(path: Path) -> Path:
    np.save(path, np.array([{"depth": 1.0}, None], dtype=object), allow_pickle=True)
    return path


def _write_npz_as_npy(path: Path) -> Path:
    with path.open("wb") as f:  # a file object stops np.savez from appending ".npz"
        np.savez(f, depth=DEPTH_M)
    return path
