import numpy as np
import pytest
import soundfile as sf

from readtalk.data.manifest import load_manifest
from readtalk.errors import ReadtalkError
from readtalk.media import load_audio, probe, read_image, read_video, write_image, write_video


def test_video_round_trip_with_audio(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (9, 64, 96, 3), dtype=np.uint8)
    audio = np.sin(np.arange(9 * 640) / 16000 * 2 * np.pi * 300).astype(np.float32) * 0.3
    write_video(tmp_path / "v.mp4", frames, audio=audio)
    info = probe(tmp_path / "v.mp4")
    assert (info.frames, info.width, info.height, info.fps) == (9, 96, 64, 25)
    assert read_video(tmp_path / "v.mp4").shape == frames.shape
    head = read_video(tmp_path / "v.mp4", 4)  # decoding ends after the first 4 frames
    assert np.array_equal(head, read_video(tmp_path / "v.mp4")[:4])
    assert read_video(tmp_path / "v.mp4", 50).shape == frames.shape  # past the end: all of it
    back = load_audio(tmp_path / "v.mp4")
    assert abs(len(back) - len(audio)) <= 1024
    assert not list(tmp_path.glob(".*partial*"))


def test_load_audio_resamples_and_mixes_down(tmp_path):
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], 1) * 0.5
    sf.write(tmp_path / "a.flac", stereo, 44100)
    a = load_audio(tmp_path / "a.flac")
    assert a.dtype == np.float32 and abs(len(a) - 16000) <= 1
    assert 0.45 < np.abs(a).max() < 0.55


def test_silence_is_valid_audio(tmp_path):
    sf.write(tmp_path / "s.wav", np.zeros(8000), 16000)
    assert not load_audio(tmp_path / "s.wav").any()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        (b"", "empty"),
        (b"this is not audio at all" * 10, "cannot read"),
    ],
)
def test_bad_audio_files(tmp_path, content, message):
    p = tmp_path / "bad.wav"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ReadtalkError, match=message):
        load_audio(p)


def test_video_without_audio_is_a_clear_error(tmp_path):
    write_video(tmp_path / "v.mp4", np.zeros((3, 32, 32, 3), np.uint8))
    with pytest.raises(ReadtalkError, match="no audio stream"):
        load_audio(tmp_path / "v.mp4")


def test_images(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    write_image(tmp_path / "i.png", img)
    assert np.array_equal(read_image(tmp_path / "i.png"), img)
    (tmp_path / "x.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ReadtalkError, match="cannot read image"):
        read_image(tmp_path / "x.png")


def test_manifest_errors(tmp_path):
    with pytest.raises(ReadtalkError, match="not found"):
        load_manifest(tmp_path / "none")
    with pytest.raises(ReadtalkError, match="no manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(ReadtalkError, match="missing keys"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.jsonl").write_text("{not json\n")
    with pytest.raises(ReadtalkError, match="not valid JSON"):
        load_manifest(tmp_path)


@pytest.mark.parametrize(
    "fmt, codec, ext, rate",
    [
        ("mp3", "libmp3lame", "mp3", 44100),
        ("ipod", "aac", "m4a", 44100),
        ("ogg", "libopus", "ogg", 48000),
        ("flac", "flac", "flac", 22050),
    ],
)
def test_load_audio_reads_common_formats(tmp_path, fmt, codec, ext, rate):
    from fractions import Fraction

    import av

    x = (0.3 * np.sin(np.arange(rate) / rate * 2 * np.pi * 440)).astype(np.float32)
    path = tmp_path / f"a.{ext}"
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate)
        s.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(
            np.stack([x, x], 1).reshape(1, -1), format="flt", layout="stereo"
        )
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for p in [*s.encode(frame), *s.encode()]:
            c.mux(p)
    a = load_audio(path)
    assert abs(len(a) - 16000) <= 400  # 1 s at 16 kHz (codec padding at most 25 ms)
    spectrum = np.abs(np.fft.rfft(a[2000:14000]))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 440) < 5  # the same tone
