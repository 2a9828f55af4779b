"""The plain functions of preprocessing, without Ray: listing, resizing, samples, shards, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from mmdiffusion.constants import AUDIO_SAMPLES, FRAMES, IMAGE_SIZE, SR_IMAGE_SIZE
from pipeline.decode import ClipOptions, load_clip, open_source
from pipeline.faults import RetryPolicy
from pipeline.frames import fit_square, scaled_size
from pipeline.listing import list_inputs
from pipeline.parts import finished_units, read_part
from pipeline.resume import Plan, new_units, read_plan, remove_unfinished, unfinished_units, write_plan
from pipeline.samples import encode_sample
from pipeline.shard_format import SampleSpec, decode_sample, jpeg_image, sr_frame_member_name
from pipeline.shards import ShardWriter
from pipeline.task import ShardTask, run_shard_task, write_source
from tests.fixtures.media import MediaSet

POLICY = RetryPolicy(attempts=2, first_delay_s=0.01)


def test_listing_finds_videos_recursively_in_any_case(media_set: MediaSet) -> None:
    found = list_inputs(str(media_set.folder))
    assert str(media_set.folder / "notes.MP4") in found
    assert str(media_set.bad["too_short"]) in found  # in a subfolder
    assert len(found) == len(media_set.good) + len(media_set.bad)
    assert found == sorted(found)


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".parquet"])
def test_list_files_give_their_uris(tmp_path: Path, media_set: MediaSet, suffix: str) -> None:
    wanted = [str(path) for path in list(media_set.good.values())[:2]]
    list_file = tmp_path / f"inputs{suffix}"
    if suffix == ".txt":
        list_file.write_text("# corpus\n" + "\n".join(wanted) + "\n\n")
    elif suffix == ".csv":
        list_file.write_text("uri,label\n" + "".join(f"{uri},x\n" for uri in wanted))
    else:
        pq.write_table(pa.table({"uri": wanted}), list_file)
    assert list_inputs(str(list_file)) == sorted(wanted)


def test_relative_entries_of_a_list_file_are_taken_from_its_folder(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "inputs.txt").write_text("clips/a.mp4\ns3://bucket/b.mp4\n")
    assert list_inputs(str(tmp_path / "lists" / "inputs.txt")) == [
        str(tmp_path / "lists" / "clips" / "a.mp4"),
        "s3://bucket/b.mp4",
    ]


def test_list_without_uri_column_and_missing_input_are_clear_errors(tmp_path: Path) -> None:
    bad_list = tmp_path / "inputs.csv"
    bad_list.write_text("path\n/a.mp4\n")
    with pytest.raises(ValueError, match="no 'uri' column"):
        list_inputs(str(bad_list))
    with pytest.raises(ValueError, match="does not exist"):
        list_inputs(str(tmp_path / "nowhere"))


@pytest.mark.parametrize(("mode", "expected"), [("pad", (64, 36)), ("crop", (114, 64))])
def test_resize_keeps_aspect_ratio(mode: str, expected: tuple[int, int]) -> None:
    assert scaled_size(1920, 1080, 64, mode) == expected


def test_fit_square_pads_short_side_and_crops_long_side() -> None:
    wide = np.full((36, 64, 3), 200, dtype=np.uint8)
    padded = fit_square(wide, 64)
    assert padded.shape == (64, 64, 3) and not padded[:14].any() and padded[14:50].min() == 200
    tall = np.arange(114 * 64 * 3, dtype=np.uint32).reshape(114, 64, 3).astype(np.uint8)
    assert np.array_equal(fit_square(tall, 64), tall[25:89])


def _first_sample(media_set: MediaSet, sr_size: int | None = None) -> dict[str, bytes]:
    info, clips = open_source(str(media_set.good["pal_25fps_48k_51"]), ClipOptions(max_clips=1, sr_size=sr_size))
    return encode_sample(next(clips), info)


def test_sr_frames_are_one_compact_jpeg_each_close_to_their_frame(media_set: MediaSet) -> None:
    info, clips = open_source(str(media_set.good["pal_25fps_48k_51"]), ClipOptions(max_clips=1, sr_size=SR_IMAGE_SIZE))
    clip = next(clips)
    members = encode_sample(clip, info)
    names = [sr_frame_member_name(SR_IMAGE_SIZE, index) for index in range(FRAMES)]
    assert list(members) == ["video.npy", "audio.npy", "json", *names]
    originals = clip.video_sr.astype(np.float64)
    for index, name in enumerate(names):
        frame = jpeg_image(members[name])
        assert frame.shape == (SR_IMAGE_SIZE, SR_IMAGE_SIZE, 3)
        errors = [np.mean((frame - original) ** 2) for original in originals]
        assert 10 * np.log10(255**2 / errors[index]) > 35
        assert int(np.argmin(errors)) == index  # frame i is frame i (the source moves from frame to frame)
    spec = SampleSpec(FRAMES, IMAGE_SIZE, AUDIO_SAMPLES, sr_size=SR_IMAGE_SIZE)
    assert np.array_equal(decode_sample(members, spec, [3])["video_sr"][0], jpeg_image(members[names[3]]))
    assert sum(len(members[name]) for name in names) < clip.video_sr.nbytes / 10


def test_shard_appears_only_when_complete(tmp_path: Path, media_set: MediaSet) -> None:
    target = tmp_path / "shards" / "shard-000000.tar"
    with pytest.raises(RuntimeError, match="crash"), ShardWriter(str(tmp_path), 0) as writer:
        writer.write("a-00000", _first_sample(media_set))
        raise RuntimeError("crash while writing")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_shard_reads_back_with_plain_webdataset(tmp_path: Path, media_set: MediaSet) -> None:
    target = tmp_path / "shards" / "shard-000000.tar"
    sample = _first_sample(media_set)
    with ShardWriter(str(tmp_path), 0) as writer:
        writer.write("a-00000", sample)
        writer.write("b-00000", sample)
    assert writer.bytes == target.stat().st_size
    read = list(wds.WebDataset(str(target), shardshuffle=False).decode())
    assert [item["__key__"] for item in read] == ["a-00000", "b-00000"]
    assert read[0]["video.npy"].shape == (FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert read[0]["audio.npy"].shape == (1, AUDIO_SAMPLES) and read[0]["audio.npy"].dtype == np.int16
    assert read[0]["json"]["start_seconds"] == 0.0


def test_shard_task_records_bad_files_with_their_reason_and_keeps_good_clips(
    tmp_path: Path, media_set: MediaSet
) -> None:
    sources = [
        str(media_set.bad["no_audio"]),
        str(media_set.good["film_24fps_22k_mono"]),
        str(media_set.bad["unreadable"]),
    ]
    record = run_shard_task(ShardTask(number=7, sources=sources), str(tmp_path), ClipOptions(), POLICY)
    assert record.unfinished is None and record.clips == 2
    assert [error["reason"] for error in record.errors] == ["no_audio", "unreadable"]
    assert all(error["uri"] in error["message"] for error in record.errors)
    rows, stored = read_part(str(tmp_path), 7, POLICY)
    assert stored == record and rows.column("source").to_pylist() == [sources[1]] * 2
    samples = list(wds.WebDataset(str(tmp_path / "shards" / "shard-000007.tar"), shardshuffle=False).decode())
    assert [sample["__key__"] for sample in samples] == rows.column("key").to_pylist()
    video, audio = load_clip(sources[1], samples[1]["json"]["start_seconds"])
    assert np.array_equal(samples[1]["video.npy"], video) and np.array_equal(samples[1]["audio.npy"], audio)


def test_resume_redoes_unfinished_units_under_their_planned_names(tmp_path: Path, media_set: MediaSet) -> None:
    sources = [str(path) for path in media_set.good.values()]
    plan = Plan(options={"resize": "pad"}, units=[])
    plan.units += new_units(plan, sources, videos_per_shard=2)
    assert [unit.number for unit in plan.units] == list(range(len(plan.units)))
    assert [uri for unit in plan.units for uri in unit.sources] == sources
    assert all(len(unit.sources) <= 2 for unit in plan.units)
    write_plan(str(tmp_path), plan, POLICY)
    run_shard_task(plan.units[0], str(tmp_path), ClipOptions(max_clips=1), POLICY)
    (tmp_path / "shards" / "shard-000001.tar").write_bytes(b"left by a crash before its part")
    (tmp_path / "shards" / ".tmp-123-shard-000002.tar").write_bytes(b"half")
    finished = finished_units(str(tmp_path), POLICY)
    assert finished == {0}
    removed = remove_unfinished(str(tmp_path), finished, POLICY)
    assert sorted(removed) == [".tmp-123-shard-000002.tar", "shard-000001.tar"]
    assert [path.name for path in (tmp_path / "shards").iterdir()] == ["shard-000000.tar"]
    assert read_plan(str(tmp_path), POLICY) == plan
    assert unfinished_units(plan, finished) == plan.units[1:]
    added = str(media_set.bad["too_short"])
    assert new_units(plan, [*sources, added], videos_per_shard=2) == [ShardTask(len(plan.units), [added])]


def test_an_output_of_an_old_format_is_refused_naming_what_changed(tmp_path: Path) -> None:
    (tmp_path / "_plan.json").write_text(json.dumps({"units": [{"number": 0, "sources": ["/a.mp4"]}]}))
    with pytest.raises(ValueError, match=r"format 1; this version writes format 3 \(2: parquet parts .*; 3: one JPEG"):
        read_plan(str(tmp_path), POLICY)
    (tmp_path / "_plan.json").write_text(json.dumps({"format_version": 2, "options": {"sr_size": 256}, "units": []}))
    with pytest.raises(ValueError, match=r"format 2; this version writes format 3 \(3: one JPEG member per SR frame"):
        read_plan(str(tmp_path), POLICY)


def test_a_format_2_output_without_sr_frames_takes_new_units_as_format_3(tmp_path: Path) -> None:
    """Format 3 changed only the SR members, so such an output's shards are format 3's."""
    unit = {"number": 0, "sources": ["/a.mp4"], "first_clips": None}
    (tmp_path / "_plan.json").write_text(
        json.dumps({"format_version": 2, "options": {"sr_size": None}, "units": [unit]})
    )
    plan = read_plan(str(tmp_path), POLICY)
    assert plan is not None and plan.format_version == 3 and plan.units == [ShardTask(0, ["/a.mp4"])]


def test_an_unexpected_exception_of_one_source_is_recorded_with_its_own_reason(
    tmp_path: Path, media_set: MediaSet
) -> None:
    good = str(media_set.good["film_24fps_22k_mono"])
    odd = str(tmp_path / "odd.mp4")
    (tmp_path / "odd.mp4").write_bytes((media_set.good["film_24fps_22k_mono"]).read_bytes())
    options = ClipOptions(max_clips=1, resize="stretch")  # a mode the converter rejects, like a decoder bug
    with ShardWriter(str(tmp_path), 0) as writer:
        rows, error = write_source(writer, odd, options, POLICY)
    assert rows == [] and error["reason"] == "unexpected_error" and error["clips_written"] == 0
    assert error["message"].startswith(f"{odd}: unexpected_error: ValueError: resize mode must be one of")
    with ShardWriter(str(tmp_path), 1) as writer:
        rows, error = write_source(writer, good, ClipOptions(max_clips=1), POLICY)
    assert error is None and len(rows) == 1
