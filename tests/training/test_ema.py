"""The EMA at the default rate: warmed up, so a short run's EMA follows the training, and resumed
exactly, so an interrupted run's EMA is the average an uninterrupted one takes of the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures.mlflow_server import MlflowServer
from tests.training.test_loop import small_config
from training.config import TrainConfig
from training.ema import EMA, EMASchedule
from training.run import train
from training.state import EMA_FILE, MODEL_FILE, read_state
from training.tasks import make_task

STEPS, RESUMED_AT = 4, 2


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory: pytest.TempPathFactory, mlflow_server: MlflowServer) -> TrainConfig:
    """A run at the default EMA settings, stopped after `RESUMED_AT` steps and resumed to `STEPS`,
    with a checkpoint (the weights of every step) after each step."""
    config = small_config(
        tmp_path_factory.mktemp("ema"),
        mlflow_server.tracking_uri,
        steps=RESUMED_AT,
        lr=2e-3,
        checkpoint_every=1,
        keep_checkpoints=STEPS,
    )
    assert config.ema_rate == 0.9999 and config.ema_warmup
    train(config, in_process=True)
    config = config.replace(steps=STEPS)
    train(config, in_process=True)
    return config


def checkpoint(config: TrainConfig, step: int) -> Path:
    return Path(config.output) / config.run_name / f"checkpoint-{step:08d}"


def initial_model(config: TrainConfig) -> torch.nn.Module:
    torch.manual_seed(config.seed)  # as the loop builds it
    return make_task(config).build_model()


def weights(path: Path) -> torch.Tensor:
    return torch.cat([tensor.flatten() for tensor in load_file(str(path)).values()])


def test_resumed_ema_is_the_uninterrupted_average_of_the_same_weights(interrupted_run: TrainConfig) -> None:
    config = interrupted_run
    model = initial_model(config)
    replayed = EMA(model, config.ema_schedule())
    for step in range(1, STEPS + 1):
        model.load_state_dict(load_file(str(checkpoint(config, step) / MODEL_FILE)))
        replayed.update(model)
    final = checkpoint(config, STEPS)
    kept = load_file(str(final / EMA_FILE))
    assert all(torch.equal(kept[name], tensor) for name, tensor in replayed.model.state_dict().items())
    assert read_state(final).ema_updates == STEPS == replayed.updates
    # A resume that lost the schedule's position would restart it: its first update copies the weights.
    restarted = EMA(initial_model(config), config.ema_schedule())
    restarted.model.load_state_dict(load_file(str(checkpoint(config, RESUMED_AT) / EMA_FILE)))
    for step in range(RESUMED_AT + 1, STEPS + 1):
        model.load_state_dict(load_file(str(checkpoint(config, step) / MODEL_FILE)))
        restarted.update(model)
    assert not torch.equal(weights(final / EMA_FILE), torch.cat([p.flatten() for p in restarted.model.parameters()]))


def test_short_run_ema_follows_the_training_not_the_initial_weights(interrupted_run: TrainConfig) -> None:
    """At 0.9999 from the first step (the EMA before warm-up), 4 steps leave it 99.9 % of the way
    back at the initial weights; warmed up, it sits near the latest ones."""
    config = interrupted_run
    initial = torch.cat([p.detach().flatten() for p in initial_model(config).parameters()])
    trained = weights(checkpoint(config, STEPS) / MODEL_FILE)
    ema = weights(checkpoint(config, STEPS) / EMA_FILE)
    constant_rate = initial.clone()
    for step in range(1, STEPS + 1):
        constant_rate.lerp_(weights(checkpoint(config, step) / MODEL_FILE), 1 - config.ema_rate)

    def share_of_the_way_back(average: torch.Tensor) -> float:
        """Where `average` lies between the trained (0) and the initial weights (1)."""
        return float((average - trained).norm() / (initial - trained).norm())

    assert share_of_the_way_back(constant_rate) > 0.99
    assert share_of_the_way_back(ema) < 0.5


def test_decay_warms_up_to_the_configured_rate() -> None:
    """diffusers' schedule as documented: the first update copies, then 1 − (1 + k)^−¾, capped."""
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, EMASchedule(rate=0.9))
    decays = []
    for _ in range(30):
        ema.update(model)
        decays.append(ema.decay)
    assert decays[0] == 0.0
    assert decays[1] == pytest.approx(1 - 2**-0.75) and decays[4] == pytest.approx(1 - 5**-0.75)
    assert decays[-1] == 0.9 and decays == sorted(decays)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ema_rate": 1.0}, r"ema_rate must lie in \[0, 1\)"),
        ({"ema_min_decay": 0.99, "ema_rate": 0.9}, r"ema_min_decay must lie in \[0, ema_rate\]"),
        ({"ema_power": 0}, "ema_power must be positive"),
        ({"ema_inv_gamma": -1.0}, "ema_inv_gamma must be positive"),
        ({"ema_update_after_step": -1}, "ema_update_after_step must be >= 0"),
    ],
)
def test_bad_ema_settings_are_named(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(data="d", output="o", **changes)
