"""Instruction tuning: chat template, assistant-only loss, packing, warm start, held-out loss and format."""

import json
import re

import numpy as np
import pytest

import quark_jax as qj
from conftest import REPO, tiny_overrides
from quark_jax.data import chat, pipeline, tokenizer
from quark_jax.evaluation.perplexity import perplexity

SFT_CONFIG = f"{REPO}/configs/runs/sft.gin"


def test_template_and_loss_weights():
    vocabulary = tokenizer.get_vocabulary()
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2 + 3?"},
                {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 2 * 3?"},
                {"role": "assistant", "content": "6"}]
    assert chat.render(messages[:2], add_generation_prompt=True) == "<|system|>Be terse.<|end|><|user|>2 + 3?<|end|><|assistant|>"
    tokens, weights = chat.tokenize_conversation(messages, vocabulary)
    assert tokens[-1] == vocabulary.eos_id and len(tokens) == len(weights)
    assert vocabulary.decode(tokens) == chat.render(messages)
    learned = vocabulary.decode([t for t, w in zip(tokens, weights) if w and t != vocabulary.eos_id])
    assert learned == "5<|end|>6<|end|>"  # both assistant turns, nothing else
    with pytest.raises(ValueError, match="message 1: role 'robot'"):
        chat.render([messages[0], {"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="reserved marker"):
        chat.render([{"role": "user", "content": "hi <|end|>"}])


def test_packed_batches_weight_only_assistant_tokens():
    vocabulary = tokenizer.get_vocabulary()
    batch = next(pipeline.batch_iterator("sft_stdlib", {"targets": 128}, 4, seed=0))
    assert batch["decoder_segment_ids"].max() > 2  # several conversations per row
    for row in range(4):
        tokens, weights, segments = (batch[k][row] for k in
                                     ("decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids"))
        last = segments.max()
        for segment in range(1, last + 1):
            in_segment = segments == segment
            text = vocabulary.decode([int(t) for t in tokens[in_segment]])
            learned = vocabulary.decode([int(t) for t in tokens[in_segment & (weights > 0)]])
            complete = "<|assistant|>" in text and text.endswith("<|end|>")
            assert complete or segment == last, (row, segment, text)  # only the row's last one may be cut
            if complete:
                assert learned == text.split("<|assistant|>", 1)[1]


def test_sft_lowers_held_out_response_loss_and_learns_the_format(trained_run, tmp_path, caplog):
    model_dir = tmp_path / "sft"
    overrides = tiny_overrides(model_dir, 80, INIT_FROM=repr(trained_run["model_dir"]), **{
        "quark_jax.OptimizerConfig.learning_rate": 2e-3, "quark_jax.OptimizerConfig.warmup_steps": 10,
        "quark_jax.TrainConfig.eval_batches": 0, "quark_jax.TrainConfig.sample_prompts": "()",
        "quark_jax.TrainConfig.log_every": 10, "CHECKPOINT_PERIOD": 80,
    })
    with caplog.at_level("INFO"):
        qj.Trainer.from_gin(SFT_CONFIG, overrides).run()
    assert "warm-started" in caplog.text
    before = perplexity(qj.load(trained_run["model_dir"]), "sft_stdlib", sequence_length=128, batch_size=8,
                        max_batches=4, progress_bar=False)
    model = qj.load(str(model_dir))
    after = perplexity(model, "sft_stdlib", sequence_length=128, batch_size=8, max_batches=4, progress_bar=False)
    print(json.dumps({"held_out_response_loss_before": before["loss"], "after": after["loss"]}))
    assert after["loss"] < before["loss"] - 1.0
    problems = [(12, 30), (7, 45), (60, 21)]
    prompts = [chat.render([{"role": "user", "content": f"What is {a} + {b}?"}], add_generation_prompt=True)
               for a, b in problems]
    outputs = model.generate(prompts, max_new_tokens=16)
    # Answers start the trained way (a number, not another role marker or prose) ...
    assert all(out[:1].isdigit() for out in outputs), outputs
    # ... and after a complete answer the model closes its turn with <|end|> and then ends the sequence.
    vocabulary = model.tokenizer
    end_id = tokenizer.special_tokens()["<|end|>"]
    module = model.model
    for (a, b), prompt in zip(problems, prompts):
        tokens = vocabulary.encode(prompt + f"{a} + {b} = {a + b}.<|end|>")
        ids = np.asarray([tokens], np.int32)
        positions = np.arange(ids.shape[1], dtype=np.int32)[None]
        logits, _ = module(ids, positions, np.ones_like(ids))
        predicted = np.asarray(logits[0].argmax(-1))
        assert predicted[-2] == end_id, (a, b, predicted[-2])
        assert predicted[-1] == vocabulary.eos_id, (a, b, predicted[-1])


def test_warm_start_shape_mismatch_names_the_parameters(trained_run, tmp_path):
    overrides = tiny_overrides(tmp_path / "bad", 2, INIT_FROM=repr(trained_run["model_dir"]),
                               **{"quark_jax.ModelConfig.mlp_dim": 512})
    with pytest.raises(ValueError, match=r"blocks\.mlp\.w_down: checkpoint \(4, 704, 256\) vs model \(4, 512, 256\)"):
        qj.Trainer.from_gin(SFT_CONFIG, overrides).run()
