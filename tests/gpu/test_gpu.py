"""On a GPU (``gpu`` marker: skipped where torch sees no CUDA device): ``device = auto``
picks it, the generator runs in bfloat16, the embedder runs there, training runs under
bfloat16 autocast with float32 weights, and the service path (continuous batching,
adapters, streams, token-id completions) answers. bench/gpu_check.sh runs these first."""

from __future__ import annotations

import math

import pytest

from ragtune.core.devices import autocast_dtype, model_dtype, resolve_device
from ragtune.core.models import load_embedder, load_generator
from ragtune.core.pipeline import Pipeline, QueryRequest
from ragtune.core.registry import get_adapter
from ragtune.tuner.api import train_adapter
from ragtune.tuner.args import TuneArgs
from tests.helpers import make_lora_adapter
from tests.service.helpers import write_index
from tests.tuner.helpers import prompt_records, write_jsonl

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpu_settings(tiny_settings):
    return tiny_settings.model_copy(update={"device": "auto", "max_new_tokens": 6})


def test_auto_picks_cuda_and_bfloat16(gpu_settings):
    import torch

    device = resolve_device(gpu_settings)
    assert device == "cuda"
    assert model_dtype(gpu_settings, device) == torch.bfloat16
    assert autocast_dtype(gpu_settings, device) == torch.bfloat16
    gen = load_generator(gpu_settings)
    params = list(gen.model.parameters())
    assert all(p.device.type == "cuda" and p.dtype == torch.bfloat16 for p in params)
    emb = load_embedder(gpu_settings)
    assert emb.model.device.type == "cuda"
    vecs = emb.encode(["The Nile is a river in Africa."])
    assert vecs.shape[0] == 1 and abs(float((vecs**2).sum()) - 1) < 1e-3
    cpu = gpu_settings.model_copy(update={"device": "cpu"})
    assert model_dtype(cpu, resolve_device(cpu)) == torch.float32


def test_every_mode_with_adapters_on_the_gpu(gpu_settings):
    write_index(gpu_settings, load_embedder(gpu_settings))
    make_lora_adapter(gpu_settings, "alpha", seed=1)
    make_lora_adapter(gpu_settings, "beta", seed=2)
    pipeline = Pipeline(gpu_settings)
    reqs = []
    for q in ("Who created Python?", "Where is the Nile?"):
        reqs += [QueryRequest(q, mode="base"), QueryRequest(q, mode="rag")]
        reqs += [QueryRequest(q, mode="finetune", adapter="alpha")]
        reqs += [QueryRequest(q, mode="hybrid", adapter="beta")]
    answers = pipeline.answer_batch(reqs)  # one batch, mixed adapters
    for req, a in zip(reqs, answers, strict=True):
        assert a.mode == req.mode and 1 <= a.usage.completion_tokens <= 6
    items = list(pipeline.stream(reqs[2]))
    assert "".join(items[:-1]).strip() == items[-1].answer
    raw = pipeline.prepare_raw([1, 2, 3], "alpha", 4)
    assert pipeline.generate([raw])[0].usage.completion_tokens >= 1


def test_training_under_bf16_autocast(gpu_settings, tmp_path):
    import torch

    args = TuneArgs(
        data=[str(write_jsonl(tmp_path / "qa.jsonl", prompt_records(16)))],
        name="gpu",
        max_steps=3,
        batch_size=4,
        val_fraction=0.25,
        eval_every=1,
        forgetting=False,
        r=4,
        alpha=8,
    )
    info = train_adapter(gpu_settings, args, progress=False)
    history = info.manifest.metrics.history  # type: ignore[union-attr]
    assert len(history) == 3 and all(math.isfinite(h.train_loss) for h in history)
    from safetensors.torch import load_file

    weights = load_file(str(get_adapter(gpu_settings, "gpu").path / "adapter_model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values())  # master weights
    a = Pipeline(gpu_settings).answer(
        QueryRequest("Who created Python?", mode="finetune", adapter="gpu")
    )
    assert a.adapter == "gpu" and a.usage.completion_tokens >= 1
