"""`mmdiff demo` end to end at a small size: corpus → shards → training → registry → samples."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from mlflow import MlflowClient

from jobs.demo import DemoConfig, run_demo
from mmdiffusion.constants import FRAMES


@pytest.mark.slow
def test_demo_runs_every_stage_and_promotes_its_model(
    ray_runtime: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    config = DemoConfig(
        output=tmp_path / "demo",
        videos=3,
        steps=2,
        batch_size=1,
        workers=2,
        samples=1,
        sampler_steps=2,
        eval_clips=2,
        held_out_videos=1,
        val_every=2,
        sample_every=2,
        model_name="demo-test",
        run_name="demo-test-run",
    )
    outputs = run_demo(config)

    shards = sorted((tmp_path / "demo" / "data" / "shards").glob("shard-*.tar"))
    assert shards, "preprocessing wrote no shard"
    client = MlflowClient(tracking_uri)
    champion = client.get_model_version_by_alias("demo-test", "champion")
    assert champion.version in ("1", 1)
    assert "models:/demo-test/1" in outputs["registered model"]
    assert (tmp_path / "demo" / "runs" / "demo-test-run" / "loss_curve.png").is_file()

    # The training run shows its held-out loss (one of the three videos is held out) and its
    # samples while it trains, at the default EMA rate.
    (training_run,) = client.search_runs(
        [client.get_experiment_by_name("mmdiffusion").experiment_id], "attributes.run_name = 'demo-test-run'"
    )
    run_id = training_run.info.run_id
    assert training_run.data.params["ema_rate"] == "0.9999"
    assert 0 < float(training_run.data.params["held_out_share"]) < 1
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [2]
    assert [m.step for m in client.get_metric_history(run_id, "val_loss_q3")] == [2]
    logged = [entry.path for entry in client.list_artifacts(run_id, "samples/step_000002")]
    assert sorted(Path(path).name for path in logged) == [
        "sample_000.mp4",
        "sample_000_audio.png",
        "sample_000_frames.png",
    ]

    samples = Path(outputs["samples (mp4 + PNG)"])
    videos = sorted(samples.glob("sample_*.mp4"))
    assert len(videos) == 1 and sorted(samples.glob("sample_*.png"))
    with av.open(str(videos[0])) as container:
        assert {stream.type for stream in container.streams} == {"video", "audio"}
        assert sum(1 for _ in container.decode(video=0)) == FRAMES
