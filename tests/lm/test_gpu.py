"""CUDA paths (bf16 autocast, fused AdamW, generation on the device). Skipped without a GPU."""

import dataclasses

import pytest
import torch
from support import small_configs

from lm.checkpoint import load_for_inference
from lm.generate import generate
from lm.train import Trainer, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_trains_in_bf16_on_cuda_and_resumes(token_dir, tmp_path):
    model, cfg = small_configs(max_steps=20, checkpoint_every=10)
    cfg = dataclasses.replace(cfg, device="cuda", dtype="auto")
    trainer = Trainer(model, cfg, token_dir, tmp_path / "run")
    assert trainer.device.type == "cuda"
    assert trainer.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    result = trainer.fit()
    assert result.metrics["loss"] < 6.0 and result.metrics["val_bpb"] > 0
    more = train(model, dataclasses.replace(cfg, max_steps=30), token_dir, tmp_path / "run", resume=True)
    assert more.step == 30


def test_generation_on_cuda_matches_cpu_greedy(token_dir, tmp_path):
    model, cfg = small_configs(max_steps=10, checkpoint_every=10)
    train(model, dataclasses.replace(cfg, device="cuda", dtype="float32"), token_dir, tmp_path / "run")
    on_gpu = load_for_inference(tmp_path / "run", device="cuda").model
    on_cpu = load_for_inference(tmp_path / "run", device="cpu").model
    prompt = [5, 17, 42]
    assert generate(on_gpu, prompt, 16, temperature=0) == generate(on_cpu, prompt, 16, temperature=0)
