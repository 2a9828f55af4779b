"""The whole job on a real local Ray, to a local folder and to a real S3 server on loopback."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from jobs.preprocess import main as preprocess_main
from mmdiffusion.constants import AUDIO_SAMPLES, FRAMES, IMAGE_SIZE, SR_IMAGE_SIZE
from pipeline.decode import load_clip
from pipeline.listing import list_inputs
from pipeline.run import QUEUED_PER_CPU, PreprocessConfig, preprocess, task_slots
from pipeline.shard_format import SampleSpec, decode_sample, sr_frame_member_name
from tests.fixtures.media import MediaSet
from tests.fixtures.s3_server import S3Server

CLIPS_PER_GOOD_FILE = 2
EXPECTED_REASONS = {"unreadable": 3, "no_audio": 1, "too_short": 1, "decode_error": 1}
CLIPS_BEFORE_DECODE_ERROR = 1


def read_shards(folder: Path) -> list[dict]:
    urls = [str(path) for path in sorted((folder / "shards").glob("shard-*.tar"))]
    return list(wds.WebDataset(urls, shardshuffle=False).decode())


@pytest.fixture(scope="module")
def local_run(ray_runtime, media_set: MediaSet, tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("out") / "corpus-shards"
    config = PreprocessConfig(input=str(media_set.folder), output=str(output), workers=2, videos_per_shard=3)
    return config, preprocess(config), output


def test_every_good_file_gives_clips_and_every_bad_file_an_error(local_run, media_set: MediaSet) -> None:
    _, stats, output = local_run
    assert stats.clips == CLIPS_PER_GOOD_FILE * len(media_set.good) + CLIPS_BEFORE_DECODE_ERROR == stats.clips_total
    errors = pq.read_table(output / "errors.parquet").to_pylist()
    assert {error["reason"]: error["clips_written"] for error in errors}["decode_error"] == CLIPS_BEFORE_DECODE_ERROR
    assert sorted(error["uri"] for error in errors) == sorted(str(path) for path in media_set.bad.values())
    reasons = [error["reason"] for error in errors]
    assert {reason: reasons.count(reason) for reason in set(reasons)} == EXPECTED_REASONS
    saved = json.loads((output / "stats.json").read_text())
    assert saved["clips"] == stats.clips and saved["errors"] == len(media_set.bad) and saved["bytes_per_clip"] > 0


def test_shards_hold_whole_samples_that_plain_webdataset_reads(local_run) -> None:
    _, stats, output = local_run
    samples = read_shards(output)
    assert len(samples) == stats.clips
    for sample in samples:
        assert {name for name in sample if not name.startswith("__")} == {"video.npy", "audio.npy", "json"}
        assert (
            sample["video.npy"].shape == (FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3) and sample["video.npy"].dtype == np.uint8
        )
        assert sample["audio.npy"].shape == (1, AUDIO_SAMPLES) and sample["audio.npy"].dtype == np.int16
    manifest = pq.read_table(output / "manifest.parquet").to_pylist()
    assert sorted(row["key"] for row in manifest) == sorted(sample["__key__"] for sample in samples)
    by_key = {row["key"]: row for row in manifest}
    first = samples[0]
    assert by_key[first["__key__"]]["source"] == first["json"]["source"]
    video, audio = load_clip(first["json"]["source"], first["json"]["start_seconds"])
    assert np.array_equal(first["video.npy"], video) and np.array_equal(first["audio.npy"], audio)


def test_rerun_writes_no_duplicate_clips_and_leaves_shards_untouched(local_run) -> None:
    config, _, output = local_run
    before = {path.name: path.read_bytes() for path in (output / "shards").iterdir()}
    again = preprocess(config)
    assert (again.clips, again.errors, again.shards, again.inputs_skipped) == (0, 0, 0, again.inputs)
    assert {path.name: path.read_bytes() for path in (output / "shards").iterdir()} == before
    keys = [sample["__key__"] for sample in read_shards(output)]
    assert len(keys) == len(set(keys)) == again.clips_total


def test_crash_before_recording_a_shard_is_redone_exactly_once(
    ray_runtime, media_set: MediaSet, tmp_path: Path
) -> None:
    config = PreprocessConfig(
        input=str(media_set.folder), output=str(tmp_path), workers=2, videos_per_shard=4, max_clips_per_video=1
    )
    first = preprocess(config)
    shard = tmp_path / "shards" / "shard-000001.tar"
    committed = shard.read_bytes()
    (tmp_path / "_parts" / "shard-000001.parquet").unlink()  # the shard was committed, its record lost
    again = preprocess(config)
    assert again.clips > 0 and again.shards == 1 and again.clips_total == first.clips_total
    keys = [sample["__key__"] for sample in read_shards(tmp_path)]
    assert len(keys) == len(set(keys)) == first.clips_total
    assert shard.read_bytes() == committed  # redone under its planned name, byte for byte


def test_cli_reads_a_list_file_and_stores_sr_frames(ray_runtime, media_set: MediaSet, tmp_path: Path) -> None:
    chosen = media_set.good["film_24fps_22k_mono"]
    (tmp_path / "inputs.csv").write_text(f"uri\n{chosen}\n")
    code = preprocess_main(
        [
            "--input",
            str(tmp_path / "inputs.csv"),
            "--output",
            str(tmp_path / "out"),
            "--sr-size",
            str(SR_IMAGE_SIZE),
            "--resize",
            "crop",
            "--stride",
            "0.8",
            "--max-clips-per-video",
            "3",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    samples = read_shards(tmp_path / "out")
    assert [sample["json"]["start_seconds"] for sample in samples] == pytest.approx([0.0, 0.8, 1.6])
    frame_members = {sr_frame_member_name(SR_IMAGE_SIZE, index) for index in range(FRAMES)}
    assert {name for name in samples[0] if not name.startswith("__")} == {
        "video.npy",
        "audio.npy",
        "json",
    } | frame_members
    shard = str(tmp_path / "out" / "shards" / "shard-000000.tar")
    as_images = next(iter(wds.WebDataset(shard, shardshuffle=False).decode("rgb8")))  # by the .jpg extension
    spec = SampleSpec(FRAMES, IMAGE_SIZE, AUDIO_SAMPLES, sr_size=SR_IMAGE_SIZE)
    frames = decode_sample(next(iter(wds.WebDataset(shard, shardshuffle=False))), spec)["video_sr"]
    assert frames.shape == (FRAMES, SR_IMAGE_SIZE, SR_IMAGE_SIZE, 3)
    assert all(np.array_equal(as_images[sr_frame_member_name(SR_IMAGE_SIZE, i)], frames[i]) for i in range(FRAMES))


def test_without_workers_units_are_queued_beyond_the_cpus_for_an_autoscaler(ray_runtime, tmp_path: Path) -> None:
    """The session runtime has 2 CPUs: --workers caps the units in flight, else they queue."""
    assert task_slots(PreprocessConfig(input=str(tmp_path), output=str(tmp_path / "out"), workers=1)) == 1
    assert task_slots(PreprocessConfig(input=str(tmp_path), output=str(tmp_path / "out"))) == 2 * (QUEUED_PER_CPU + 1)


def test_cli_reports_a_bad_flag_value_clearly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert preprocess_main(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--stride", "0.25"]) == 2
    assert "stride must be a positive multiple of 0.1 s" in capsys.readouterr().err


def test_s3_input_and_output_through_a_real_object_store(
    ray_runtime, s3_server: S3Server, media_set: MediaSet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.make_bucket("preprocess-test")
    client = s3_server.client()
    uploads = [
        media_set.good["ntsc_2997fps_44k_stereo"],
        media_set.good["late_audio_25fps_44k"],
        media_set.bad["no_audio"],
    ]
    for path in uploads:
        client.upload_file(str(path), "preprocess-test", f"corpus/{path.name}")
    config = PreprocessConfig(input=f"{bucket}/corpus", output=f"{bucket}/shards-out", workers=2, videos_per_shard=2)
    stats = preprocess(config)
    assert (stats.inputs, stats.clips, stats.errors) == (3, 4, 1)
    keys = {item["Key"] for item in client.list_objects_v2(Bucket="preprocess-test", Prefix="shards-out/")["Contents"]}
    assert {"shards-out/manifest.parquet", "shards-out/errors.parquet", "shards-out/stats.json"} <= keys
    assert not [key for key in keys if "/.tmp-" in key]
    shard_keys = sorted(key for key in keys if key.startswith("shards-out/shards/") and key.endswith(".tar"))
    (tmp_path / "shards").mkdir()
    for key in shard_keys:
        client.download_file("preprocess-test", key, str(tmp_path / "shards" / key.rsplit("/", 1)[1]))
    samples = read_shards(tmp_path)
    assert len(samples) == 4 and all(
        sample["json"]["source"].startswith("s3://preprocess-test/corpus/") for sample in samples
    )
    errors = pq.read_table(
        io.BytesIO(client.get_object(Bucket="preprocess-test", Key="shards-out/errors.parquet")["Body"].read())
    )
    assert errors.column("reason").to_pylist() == ["no_audio"]
    again = preprocess(config)
    assert (again.clips, again.inputs_skipped, again.clips_total) == (0, 3, 4)
    client.put_object(Bucket="preprocess-test", Key="corpus/inputs.txt", Body=b"silent_film.mov\n")
    assert list_inputs(f"{bucket}/corpus/inputs.txt") == [f"{bucket}/corpus/silent_film.mov"]


def test_load_clip_reads_s3_uris_like_local_files(
    s3_server: S3Server, media_set: MediaSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    s3_server.make_bucket("conditioning")
    local = media_set.good["pal_25fps_48k_51"]
    s3_server.client().upload_file(str(local), "conditioning", local.name)
    remote_video, remote_audio = load_clip(f"s3://conditioning/{local.name}", 1.5)
    local_video, local_audio = load_clip(str(local), 1.5)
    assert np.array_equal(remote_video, local_video) and np.array_equal(remote_audio, local_audio)


def test_killed_job_joined_through_ray_address_resumes_without_duplicates(
    ray_runtime, media_set: MediaSet, tmp_path: Path
) -> None:
    import ray

    output = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "jobs.preprocess",
        "--input",
        str(media_set.folder),
        "--output",
        str(output),
        "--workers",
        "1",
        "--videos-per-shard",
        "1",
    ]
    env = {
        **os.environ,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = output / "_parts"
    deadline = time.monotonic() + 120
    while (
        not (parts.is_dir() and any(parts.glob("shard-*.parquet")))
        and job.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    job.kill()
    job.wait()
    finished_before_kill = len(list(parts.glob("shard-*.parquet")))
    units = len(media_set.good) + len(media_set.bad)
    assert 1 <= finished_before_kill < units, "the job must be killed part-way"
    stats = preprocess(PreprocessConfig(input=str(media_set.folder), output=str(output), workers=2, videos_per_shard=1))
    assert stats.inputs_skipped >= finished_before_kill  # a task of the killed run may still have finished
    keys = [sample["__key__"] for sample in read_shards(output)]
    assert (
        len(keys)
        == len(set(keys))
        == stats.clips_total
        == CLIPS_PER_GOOD_FILE * len(media_set.good) + CLIPS_BEFORE_DECODE_ERROR
    )
