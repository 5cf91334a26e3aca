"""Sharded training (`ragtune tune --nproc N --strategy fsdp`: torch FSDP2 under torchrun, gloo
on the CPU): the same losses and adapter as one process on the same global batch, one writer,
and a run killed with -9 that resumes from its checkpoint. Misused flags are one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.cli.main import main
from ragtune.core.config import Settings
from ragtune.core.errors import UnknownAdapter
from ragtune.core.pipeline import Pipeline, QueryRequest
from ragtune.core.registry import get_adapter, list_adapters
from ragtune.tuner.distributed import decoder_layers
from tests.tuner.helpers import prompt_records, write_jsonl
from tests.tuner.test_distributed import kill_after, one_and_two_processes, tune

FSDP = ["--nproc", "2", "--strategy", "fsdp"]


def _cli(settings: Settings, capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    base = ["--data-dir", str(settings.data_dir), "--embedder", settings.embedder]
    base += ["--generator", settings.generator, "--threads", "1"]
    with pytest.raises(SystemExit) as e:
        main([*base, *argv])
    return int(e.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--strategy", "fsdp"], "--strategy fsdp shards the model over processes: give --nproc"),
        (["--strategy", "fsdp", "--nproc", "1"], "give --nproc 2 or more"),
        (["--retrain", "a", "--strategy", "fsdp"], "leave --nproc and --strategy out"),
        (["--strategy", "fsdp", "--nproc", "2", "--method", "full"], "fsdp trains LoRA"),
        (["--strategy", "zero", "--nproc", "2"], "'zero' is not one of 'ddp', 'fsdp'"),
    ],
)
def test_bad_combinations_are_one_clear_error(
    tiny_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture, extra, said
) -> None:
    data = write_jsonl(tmp_path / "qa.jsonl", prompt_records(4))
    rc, err = _cli(tiny_settings, capsys, "tune", "--data", str(data), "--name", "x", *extra)
    assert rc == 2 and said in err, err
    assert "Traceback" not in err and not tiny_settings.adapters_dir.exists()


def test_the_layers_to_shard_are_the_decoder_blocks(tiny_settings: Settings) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragtune.core.models import generator_folder

    model = AutoModelForCausalLM.from_pretrained(generator_folder(tiny_settings))
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    layers = decoder_layers(peft)
    assert [type(m).__name__ for m in layers] == ["LlamaDecoderLayer"] * 2
    assert layers == list(model.model.layers)


@pytest.mark.timeout(600)
def test_fsdp_over_two_processes_trains_what_one_does(tiny_settings, tmp_path):
    steps = ["--max-steps", "4", "--val-fraction", "0.25", "--eval-every", "1", "--forgetting"]
    wa, wb = one_and_two_processes(tiny_settings, tmp_path, steps, FSDP)
    # whole tensors (gathered), not rank 0's shards
    assert all(wa[k].shape == wb[k].shape for k in wa)
    m1, m2 = get_adapter(tiny_settings, "one").manifest, get_adapter(tiny_settings, "two").manifest
    assert m1.metrics and m2.metrics
    assert (m1.metrics.processes, m1.metrics.strategy) == (None, None)
    assert (m2.metrics.processes, m2.metrics.strategy) == (2, "fsdp")
    assert m2.metrics.trainable_params == m1.metrics.trainable_params  # counted whole
    assert m2.metrics.perplexity and m1.metrics.perplexity  # measured on the sharded model too
    assert abs(m2.metrics.perplexity.tuned - m1.metrics.perplexity.tuned) < 1e-2
    assert m1.hyperparameters == m2.hyperparameters  # the strategy does not shape the weights
    # it loads and answers, as the one-process adapter does
    pipeline = Pipeline(tiny_settings)
    ask = [QueryRequest("Who created Python?", mode="finetune", adapter=n) for n in ("one", "two")]
    answers = pipeline.answer_batch(ask)
    assert answers[0].answer == answers[1].answer and answers[1].adapter == "two"
    assert answers[1].usage.completion_tokens >= 1
    assert not (tiny_settings.adapters_dir / ".runs" / "two").exists()  # checkpoints cleaned


@pytest.mark.timeout(600)
def test_fsdp_early_stop_puts_the_best_weights_back(tiny_settings, tmp_path):
    """A big learning rate makes step 2's validation worse than step 1's; --patience 1 stops
    there and the sharded model gets step 1's weights back (read by rank 0, broadcast)."""
    data = write_jsonl(tmp_path / "qa.jsonl", prompt_records(16))
    steps = ["--max-steps", "6", "--val-fraction", "0.25", "--eval-every", "1"]
    steps += ["--lr", "0.3", "--patience", "1"]
    one = tune(tiny_settings, data, "one", *steps)
    assert one.returncode == 0, one.stderr[-3000:]
    two = tune(tiny_settings, data, "two", *steps, *FSDP)
    assert two.returncode == 0, two.stderr[-3000:]
    for name in ("one", "two"):
        m = get_adapter(tiny_settings, name).manifest.metrics
        assert m is not None and m.stopped_early and (m.best_step, m.steps) == (1, 2), name
    from safetensors.torch import load_file

    wa = load_file(str(get_adapter(tiny_settings, "one").path / "adapter_model.safetensors"))
    wb = load_file(str(get_adapter(tiny_settings, "two").path / "adapter_model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4  # step 1's, not step 2's


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fsdp_run_killed_with_9_resumes_from_its_checkpoint(tiny_settings, tmp_path):
    data = write_jsonl(tmp_path / "qa.jsonl", prompt_records(32))
    args = ["--max-steps", "60", "--save-every", "2", "--val-fraction", "0.25"]
    args += ["--eval-every", "10", *FSDP]
    stopped = 0
    for rank in (1, 0):  # the one that only computes, then the one that writes
        launcher = tune(tiny_settings, data, "sharded", *args, wait=False)
        stopped = kill_after(tiny_settings, launcher, "sharded", rank, past=stopped + 2)
        with pytest.raises(UnknownAdapter):
            get_adapter(tiny_settings, "sharded")  # nothing half-published
        assert list_adapters(tiny_settings) == []
    done = tune(tiny_settings, data, "sharded", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = get_adapter(tiny_settings, "sharded").manifest.metrics
    assert metrics is not None and metrics.steps == 60 and metrics.strategy == "fsdp"
    assert metrics.resumed_from_step is not None and metrics.resumed_from_step >= stopped
    # the whole run's validations are there, those before the kills from the checkpoint
    assert [h.step for h in metrics.history] == [10, 20, 30, 40, 50, 60]
    answer = Pipeline(tiny_settings).answer(
        QueryRequest("Where is the Nile?", mode="finetune", adapter="sharded")
    )
    assert answer.adapter == "sharded" and answer.usage.completion_tokens >= 1
    leftovers = [p.name for p in tiny_settings.adapters_dir.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []
