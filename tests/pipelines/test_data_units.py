"""Per-sample decode / validate functions (no Ray): text, image, audio."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from pipelines.data.audio import load_audio_16k, normalize_audio
from pipelines.stages.corpus import AudioLimits, ImageLimits, TextLimits
from pipelines.data.image import image_pixels, normalize_image
from pipelines.data.text import Rejected, normalize_text


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def wav(wave: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    out = io.BytesIO()
    sf.write(out, wave, rate, format=fmt, subtype="PCM_16")
    return out.getvalue()


def reason_of(fn, *args) -> str:
    with pytest.raises(Rejected) as e:
        fn(*args)
    return e.value.reason


def test_text_nfc_trim_and_rejects():
    limits = TextLimits(min_chars=1, max_chars=10)
    # "e" + combining acute -> the single precomposed character
    assert normalize_text("  cafe\u0301\n".encode(), limits) == "caf\u00e9"
    assert normalize_text(None, limits) is None
    assert reason_of(normalize_text, b"\xff\xfeab", limits) == "non_utf8_text"
    assert reason_of(normalize_text, b" \n\t ", limits) == "empty_text"
    assert reason_of(normalize_text, b"x" * 11, limits) == "too_long"
    assert reason_of(normalize_text, b"ab", TextLimits(min_chars=3)) == "too_short"


def test_image_exif_orientation_alpha_and_bounds():
    limits = ImageLimits(min_side=8, max_side=64, max_pixels=100_000)
    # A 20x10 JPEG whose EXIF says "rotate 90": stored landscape, shown portrait.
    img = Image.new("RGB", (20, 10), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    out = Image.open(io.BytesIO(normalize_image(buf.getvalue(), limits)))
    assert out.size == (10, 20) and out.mode == "RGB"
    # Fully transparent RGBA composites on white.
    clear = png(Image.new("RGBA", (16, 16), (0, 0, 0, 0)))
    assert Image.open(io.BytesIO(normalize_image(clear, limits))).getpixel((3, 3)) == (255, 255, 255)
    # A plain RGB JPEG within bounds is kept byte for byte.
    plain = io.BytesIO()
    Image.new("RGB", (32, 16), (1, 2, 3)).save(plain, format="JPEG")
    assert normalize_image(plain.getvalue(), limits) == plain.getvalue()
    # Longer side over max_side is downscaled keeping aspect.
    big = normalize_image(png(Image.new("RGB", (128, 32))), limits)
    assert Image.open(io.BytesIO(big)).size == (64, 16)
    good = png(Image.new("RGB", (40, 40), (9, 9, 9)))
    assert reason_of(normalize_image, good[: len(good) // 2], limits) == "corrupt_image"
    assert reason_of(normalize_image, b"not an image at all", limits) == "corrupt_image"
    assert reason_of(normalize_image, png(Image.new("RGB", (4, 40))), limits) == "too_small"
    assert reason_of(normalize_image, png(Image.new("L", (400, 400))), limits) == "decompression_bomb"
    gif = io.BytesIO()
    Image.new("P", (16, 16)).save(gif, format="GIF")
    assert reason_of(normalize_image, gif.getvalue(), limits) == "unsupported_format"
    assert reason_of(normalize_image, good, ImageLimits(max_bytes=10)) == "too_large"


def test_image_pixels_shape_and_centre_crop():
    img = Image.new("RGB", (60, 30), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 15, 30))  # left quarter red: cropped away by the centre square
    pix = image_pixels(png(img), 16)
    assert pix.shape == (3, 16, 16) and pix.dtype == np.uint8
    assert pix[2].min() > 200 and pix[0].max() < 60


def test_audio_mono_16k_and_rejects():
    limits = AudioLimits(min_seconds=0.1, max_seconds=2.0)
    t = np.arange(44100 // 2) / 44100.0
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], 1) * 0.5
    out = normalize_audio(wav(stereo.astype(np.float32), 44100), limits, "wav")
    info = sf.info(io.BytesIO(out))
    assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    assert abs(info.frames - 8000) <= 2
    wave = load_audio_16k(out)
    # the 440 Hz tone survives resampling: spectrum peak within one bin
    peak = np.argmax(np.abs(np.fft.rfft(wave))) * 16000 / len(wave)
    assert abs(peak - 440) < 4
    assert reason_of(normalize_audio, b"RIFF....garbage", limits, "wav") == "undecodable_audio"
    assert reason_of(normalize_audio, wav(np.zeros((0, 1), np.float32), 8000), limits, "wav") == "empty_audio"
    assert reason_of(normalize_audio, wav(np.zeros((8000, 1), np.float32), 8000), limits, "wav") == "empty_audio"
    assert reason_of(normalize_audio, wav(np.ones((80, 1), np.float32) * .1, 8000), limits, "wav") == "too_short"
    assert reason_of(normalize_audio, wav(np.ones((8000 * 3, 1), np.float32) * .1, 8000), limits, "wav") == "too_long"
    assert reason_of(normalize_audio, b"ID3...", limits, "mp3") == "unsupported_format"
