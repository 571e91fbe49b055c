"""Devices and precision on the CPU: absent devices, bf16/fp16 autocast, accumulation, checkpointing."""

from __future__ import annotations

import pytest
import torch
import yaml
from test_trainer_causal import causal_config, kd_store, tiny_student  # noqa: F401  (module fixtures)

from factory.errors import StillhouseError
from trainer.devices import autocast, grad_scaler, resolve_device
from trainer.training import train


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path, run_cli, kd_store, tiny_student):  # noqa: F811
    with pytest.raises(StillhouseError, match="device: cuda, but torch sees no CUDA GPU"):
        resolve_device("cuda")
    config = causal_config(kd_store, tiny_student, tmp_path / "run", device="cuda")
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    code, _, err = run_cli("train", path)
    assert code == 1
    assert err.strip().count("\n") == 0 and "device: cuda, but torch sees no CUDA GPU" in err
    assert not (tmp_path / "run" / "model").exists()


def test_auto_and_cpu_resolve_here():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    assert resolve_device("auto").type in {expected, "mps", "cpu"} - {None}


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_matmuls_in_the_precision(precision, dtype):
    layer = torch.nn.Linear(8, 8)
    with autocast(torch.device("cpu"), precision):
        assert layer(torch.randn(2, 8)).dtype == dtype
    with autocast(torch.device("cpu"), "fp32"):
        assert layer(torch.randn(2, 8)).dtype == torch.float32
    assert grad_scaler(torch.device("cpu"), precision).is_enabled() == (precision == "fp16")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_kd_learns_and_tracks_fp32(kd_store, tiny_student, tmp_path, precision):  # noqa: F811
    fp32 = train(causal_config(kd_store, tiny_student, tmp_path / "fp32", epochs=3))
    mixed = train(causal_config(kd_store, tiny_student, tmp_path / precision, epochs=3, precision=precision))
    assert all(map(torch.isfinite, torch.tensor(mixed.losses)))
    assert mixed.losses[-1] < mixed.losses[0]
    assert mixed.losses == pytest.approx(fp32.losses, rel=0.1)


@pytest.mark.parametrize("objective", ["token_kd", "sft"])
def test_accumulation_and_checkpointing_give_the_same_steps(kd_store, tiny_student, tmp_path, objective):  # noqa: F811
    # batch_size is the examples per optimizer step: 2 micro-batches of 2, or 4 at once, same gradient
    settings = dict(objective=objective, batch_size=4, epochs=2)
    whole = train(causal_config(kd_store, tiny_student, tmp_path / "whole", **settings))
    accumulated = train(
        causal_config(kd_store, tiny_student, tmp_path / "accumulated", gradient_accumulation_steps=2, **settings)
    )
    assert accumulated.losses == pytest.approx(whole.losses, rel=1e-4)
    student = causal_config(kd_store, tiny_student, tmp_path).student.model_copy(
        update={"gradient_checkpointing": True}
    )
    checkpointed = train(causal_config(kd_store, tiny_student, tmp_path / "checkpointed", student=student, **settings))
    assert checkpointed.losses == pytest.approx(whole.losses, rel=1e-4)
