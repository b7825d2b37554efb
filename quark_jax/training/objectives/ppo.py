"""RLHF with PPO (Schulman et al. 2017; Ouyang et al. 2022) or GRPO (Shao et al. 2024), run by the Trainer.

One trainer step is one PPO iteration:

1. **Rollouts** (host, :meth:`PPO.prepare`): the step's prompts are sampled through the compiled generate
   function of :class:`~quark_jax.inference.generate.Generator` with the current policy parameters, one
   seed per row derived from ``(TrainConfig.seed, step, row)``; the completions are scored by a Python reward
   function (:data:`REWARD_FUNCTIONS`, or any callable bound in gin) or by a reward-model run. A rollout is
   therefore a deterministic function of (seed, step, parameters), and a killed run resumes exactly.
2. **Updates** (one jitted function, :meth:`PPO.make_train_step`): log-probabilities and values of the
   rollout under the pre-update policy and under the frozen reference; per-token rewards
   ``-kl_coef · (log π − log π_ref)`` plus the sequence reward on the last completion token; GAE(γ, λ) over
   completion tokens; whitened advantages; then ``ppo_epochs × num_minibatches`` clipped-surrogate +
   clipped-value (+ entropy) updates in a ``lax.scan``.

With ``estimator='grpo'`` each prompt is sampled ``group_size`` times, the advantage of every token of a
completion is its sequence reward normalised within its group, there is no value head, and the KL to the
reference is a loss term (the k3 estimator) instead of a reward term.

The trainable tree is the policy's parameters plus ``heads.value`` (PPO): ``value_t = w · hidden_t + b`` on
the final-normed hidden state. ``model_params`` drops the head, so ``qj.load`` of a PPO run gives the policy.
The reference (``reference_dir``, default ``TrainConfig.init_from``) is a frozen input of the step.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from quark_jax.training.objectives.base import Objective, RunContext, masked_mean, split_heads, token_logprobs
from quark_jax.training.state import TrainState
from quark_jax.training.steps import apply_update

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# Programmatic rewards: (prompt text, completion text) -> float. Bind one by name (``reward_fn = 'digits'``)
# or bind any callable (e.g. a gin-configurable function) directly.
# ---------------------------------------------------------------------------------------------------------


def digit_fraction(prompt: str, completion: str) -> float:
    """Fraction of the completion's non-space characters that are digits (0 for an empty completion)."""
    chars = [c for c in completion if not c.isspace()]
    return sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0


def contains_digit(prompt: str, completion: str) -> float:
    return float(any(c.isdigit() for c in completion))


def newline_fraction(prompt: str, completion: str) -> float:
    """Fraction of the completion's characters that are newlines."""
    return completion.count("\n") / len(completion) if completion else 0.0


def arithmetic(prompt: str, completion: str) -> float:
    """1 if the completion's first number answers the prompt's ``a + b`` / ``a - b`` / ``a * b``, else 0."""
    question = re.search(r"(-?\d+)\s*([-+*])\s*(-?\d+)", prompt)
    answer = re.search(r"-?\d+", completion.split("=")[-1] if "=" in completion else completion)
    if not question or not answer:
        return 0.0
    a, op, b = int(question.group(1)), question.group(2), int(question.group(3))
    return float(int(answer.group()) == {"+": a + b, "-": a - b, "*": a * b}[op])


REWARD_FUNCTIONS: dict[str, Callable[[str, str], float]] = {
    "digit_fraction": digit_fraction,
    "contains_digit": contains_digit,
    "newline_fraction": newline_fraction,
    "arithmetic": arithmetic,
}


# ---------------------------------------------------------------------------------------------------------
# Pure math (jitted inside the step)
# ---------------------------------------------------------------------------------------------------------


def whiten(x: Float[Array, "B T"], mask: Float[Array, "B T"], eps: float = 1e-8) -> Float[Array, "B T"]:
    mean = masked_mean(x, mask)
    var = masked_mean(jnp.square(x - mean), mask)
    return (x - mean) * jax.lax.rsqrt(var + eps) * mask


def token_rewards(
    logp: Float[Array, "B T"], ref_logp: Float[Array, "B T"], scores: Float[Array, "B"], mask: Float[Array, "B T"],
    kl_coef: float,
) -> Float[Array, "B T"]:
    """``-kl_coef · (log π − log π_ref)`` on every completion token, plus the sequence score on the last one."""
    T = mask.shape[1]
    last = jnp.max(jnp.where(mask > 0, jnp.arange(T)[None, :], -1), axis=1)  # [B], -1 for an empty completion
    at_last = (jnp.arange(T)[None, :] == last[:, None]).astype(jnp.float32)
    return (-kl_coef * (logp - ref_logp) + scores[:, None] * at_last) * mask


def gae(
    rewards: Float[Array, "B T"], values: Float[Array, "B T"], mask: Float[Array, "B T"], gamma: float, lam: float
) -> tuple[Float[Array, "B T"], Float[Array, "B T"]]:
    """(advantages, returns) by generalised advantage estimation over the masked (completion) positions.

    Completion tokens are contiguous; the episode ends after the last masked position (its next value is 0).
    """
    next_values = jnp.concatenate([values[:, 1:] * mask[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    next_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
    deltas = rewards + gamma * next_values - values

    def back(carry: Float[Array, "B"], xs):
        delta, cont, m = xs
        adv = (delta + gamma * lam * cont * carry) * m
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros(rewards.shape[0], jnp.float32),
                          (deltas.T, next_mask.T, mask.T), reverse=True)
    advantages = adv.T * mask
    return advantages, (advantages + values) * mask


def group_advantages(scores: Float[Array, "B"], group_size: int, eps: float = 1e-6) -> Float[Array, "B"]:
    """GRPO: each score normalised by the mean and std of its group (rows ``[g·G, (g+1)·G)``)."""
    groups = scores.reshape(-1, group_size)
    normed = (groups - groups.mean(axis=1, keepdims=True)) / (groups.std(axis=1, keepdims=True) + eps)
    return normed.reshape(-1)


def clipped_policy_loss(
    logp: Float[Array, "B T"], old_logp: Float[Array, "B T"], advantages: Float[Array, "B T"],
    mask: Float[Array, "B T"], clip_eps: float,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    ratio = jnp.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
    log_ratio = logp - old_logp
    return loss, {
        "clip_fraction": masked_mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32), mask),
        "approx_kl": masked_mean(jnp.exp(log_ratio) - 1.0 - log_ratio, mask),  # k3 estimate of KL(old ‖ new)
    }


def clipped_value_loss(
    values: Float[Array, "B T"], old_values: Float[Array, "B T"], returns: Float[Array, "B T"],
    mask: Float[Array, "B T"], clip: float,
) -> Float[Array, ""]:
    clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    return 0.5 * masked_mean(jnp.maximum(jnp.square(values - returns), jnp.square(clipped - returns)), mask)


# ---------------------------------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PPO(Objective):
    """Policy optimisation against a reward (see the module docstring); ``configs/runs/ppo.gin``."""

    reference_dir: str | None = None  # the frozen reference (KL anchor); None = TrainConfig.init_from
    reward_fn: Any = "digit_fraction"  # a name in REWARD_FUNCTIONS or a callable (prompt, completion) -> float
    reward_model_dir: str | None = None  # a reward-model run (params["heads"]["reward"]); replaces reward_fn
    # Prompts: 'instructions' (data/instructions/{train,validation}.jsonl through the chat template), a JSONL
    # path (records with "prompt" or "messages"), or a tuple of literal prompt strings.
    prompts: Any = "instructions"
    chat_template: bool = True  # render JSONL prompts with quark_jax.data.chat (a generation prompt)
    prompt_filter: str | None = None  # keep only prompts matching this regular expression (re.search)
    num_prompts: int | None = None  # prompts per step; None = DataConfig.batch_size
    max_prompt_tokens: int = 48  # longer prompts keep their last tokens
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    estimator: str = "ppo"  # or "grpo"
    group_size: int = 1  # samples per prompt (GRPO needs >= 2)
    ppo_epochs: int = 2
    num_minibatches: int = 2
    clip_eps: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    kl_coef: float = 0.05
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    value_grad_to_trunk: bool = False  # False: the value head reads stop_gradient(hidden)
    eval_prompts: int = 16  # greedy completions scored by `evaluate` (validation prompts)

    kind: ClassVar[str] = "ppo"

    def __post_init__(self):
        if self.estimator not in ("ppo", "grpo"):
            raise ValueError(f"PPO.estimator={self.estimator!r} must be 'ppo' or 'grpo'")
        if self.estimator == "grpo" and self.group_size < 2:
            raise ValueError("PPO.estimator='grpo' needs group_size >= 2 samples per prompt")
        if self.temperature <= 0:
            raise ValueError(f"PPO.temperature={self.temperature} must be > 0 (rollouts must explore)")
        if self.ppo_epochs < 1 or self.num_minibatches < 1:
            raise ValueError("PPO.ppo_epochs and PPO.num_minibatches must be >= 1")
        if isinstance(self.reward_fn, str) and self.reward_fn not in REWARD_FUNCTIONS and not self.reward_model_dir:
            raise ValueError(f"PPO.reward_fn={self.reward_fn!r} is not one of {sorted(REWARD_FUNCTIONS)} "
                             "(or bind a callable, or reward_model_dir)")

    @property
    def head(self) -> str | None:
        """The value head (PPO; starts at V = 0); GRPO has none."""
        return None if self.estimator == "grpo" else "value"

    @property
    def updates_per_step(self) -> int:
        return self.ppo_epochs * self.num_minibatches

    # ---- set-up ----------------------------------------------------------------------------------
    def setup(self, run: RunContext) -> None:
        super().setup(run)
        cfg = run.config
        if jax.process_count() > 1:  # the generator fetches whole arrays to one host
            raise NotImplementedError("PPO rollouts run on a single host (any number of its devices); "
                                      f"this run has {jax.process_count()} processes")
        reference_dir = self.reference_dir or cfg.init_from
        if not reference_dir:
            raise ValueError("PPO needs a reference run: bind PPO.reference_dir or TrainConfig.init_from (INIT_FROM)")
        config, self.reference_graphdef, params, shardings = run.load_run(reference_dir, "reference")
        if config.vocab_size != run.model_config.vocab_size:
            raise ValueError(f"reference vocab_size {config.vocab_size} != policy vocab_size "
                             f"{run.model_config.vocab_size}")
        frozen, frozen_shardings = {"reference": params}, {"reference": shardings}
        self._reward_model = None
        if self.reward_model_dir:
            rm_config, rm_graphdef, rm_params, rm_shardings = run.load_run(self.reward_model_dir, "reward model",
                                                                           with_heads=True)
            if "reward" not in (rm_params.get("heads") or {}):
                raise ValueError(f"reward model {self.reward_model_dir} has no heads.reward")
            self._reward_model = (rm_config, rm_graphdef)
            frozen["reward_model"], frozen_shardings["reward_model"] = rm_params, rm_shardings
        self._frozen = (frozen, frozen_shardings)
        self.num_rows = (self.num_prompts or cfg.data.batch_size) * self.group_size
        if self.num_rows % self.num_minibatches:
            raise ValueError(f"{self.num_rows} rollouts per step do not split into "
                             f"num_minibatches={self.num_minibatches}")
        self.seq_len = self.max_prompt_tokens + self.max_new_tokens + 1  # +1: a final EOS action
        self._prompt_cache: dict[str, list[str]] = {}
        self._generator = None

    def frozen(self):
        return self._frozen

    def objective_info(self) -> dict:
        reward = self.reward_fn if isinstance(self.reward_fn, str) else getattr(self.reward_fn, "__name__",
                                                                                  repr(self.reward_fn))
        return {"kind": self.kind, "estimator": self.estimator,
                "reference_dir": self.reference_dir or self.run.config.init_from,
                "reward": f"reward model {self.reward_model_dir}" if self.reward_model_dir else reward,
                "kl_coef": self.kl_coef}

    # ---- prompts ---------------------------------------------------------------------------------
    def prompt_texts(self, split: str) -> list[str]:
        if split in self._prompt_cache:
            return self._prompt_cache[split]
        from quark_jax.data import chat, chat_tasks

        source = self.prompts
        if isinstance(source, str):
            path = source
            if source == "instructions":
                name = "train" if split == "train" else "validation"
                path = os.path.join(chat_tasks.INSTRUCTIONS_DIR, f"{name}.jsonl")
            texts = []
            for record in chat_tasks.read_jsonl(path, missing_hint=f"PPO.prompts={source!r}"):
                # A prompt-only record is a conversation without a response; the policy writes the last turn.
                messages = chat.messages_of({"response": "", **record})
                if messages[-1]["role"] == "assistant":
                    messages = messages[:-1]
                if self.chat_template:
                    texts.append(chat.render(messages, add_generation_prompt=True))
                else:
                    texts.append("".join(m["content"] for m in messages))
        else:
            texts = [str(p) for p in source]
        if self.prompt_filter:
            texts = [t for t in texts if re.search(self.prompt_filter, t)]
        if not texts:
            raise ValueError(f"PPO.prompts={source!r} holds no prompts")
        self._prompt_cache[split] = texts
        return texts

    def batches(self, split, start_batch, shuffle, repeat=True):
        """Prompt indices per step: batch ``i`` depends only on (seed, split, i), so resume needs no state."""
        n = len(self.prompt_texts(split))
        per_step = self.num_rows // self.group_size
        index = start_batch
        while True:
            if shuffle:
                rng = np.random.default_rng([self.run.config.seed, index, split == "train"])
                chosen = rng.choice(n, size=per_step, replace=per_step > n)
            else:
                chosen = (np.arange(per_step) + index * per_step) % n
            yield {"prompt_index": chosen.astype(np.int32)}
            index += 1
            if not repeat and index * per_step >= n:
                return

    # ---- rollouts (host) -------------------------------------------------------------------------
    def _generator_for(self, params):
        from quark_jax.inference.generate import Generator

        if self._generator is None:
            self._generator = Generator(self.run.graphdef, params, self.run.vocabulary, mesh=self.run.mesh)
        self._generator.params = params
        return self._generator

    def _encode_prompts(self, texts: Sequence[str]) -> list[list[int]]:
        vocab = self.run.vocabulary
        return [list(vocab.encode(t))[-self.max_prompt_tokens:] or [vocab.eos_id] for t in texts]

    def rollout(self, params, frozen, prompt_texts: Sequence[str], seeds: Sequence[int] | None,
                greedy: bool = False) -> dict[str, np.ndarray]:
        """Samples one completion per prompt text and scores it: the step's input arrays."""
        from quark_jax.inference.generate import Request

        vocab = self.run.vocabulary
        prompts = self._encode_prompts(prompt_texts)
        temperature = 0.0 if greedy else self.temperature
        requests = [Request(p, self.max_new_tokens, temperature, 0 if greedy else self.top_k,
                            1.0 if greedy else self.top_p, int(seeds[i]) if seeds is not None else 0)
                    for i, p in enumerate(prompts)]
        completions = self._generator_for(self.model_params(params, frozen)).generate_requests(requests)
        n, L = len(prompts), self.seq_len
        tokens = np.zeros((n, L), np.int32)
        segments = np.zeros((n, L), np.int32)
        actions = np.zeros((n, L - 1), np.float32)  # 1 where target t+1 is a completion token
        texts = []
        for row, (p, c) in enumerate(zip(prompts, completions)):
            new = list(c.tokens) + ([vocab.eos_id] if c.finish_reason == "eos" else [])
            seq = p + new
            tokens[row, : len(seq)] = seq
            segments[row, : len(seq)] = 1
            actions[row, len(p) - 1: len(seq) - 1] = 1.0
            texts.append(vocab.decode(list(c.tokens)))
        scores = self.score(frozen, prompt_texts, texts, tokens, segments)
        return {"tokens": tokens, "segment_ids": segments, "action_mask": actions, "scores": scores,
                "response_length": actions.sum(axis=1)}

    def score(self, frozen, prompt_texts, completion_texts, tokens, segments) -> np.ndarray:
        if self._reward_model is not None:
            return self._score_with_reward_model(frozen["reward_model"], tokens, segments).astype(np.float32)
        fn = REWARD_FUNCTIONS[self.reward_fn] if isinstance(self.reward_fn, str) else self.reward_fn
        return np.asarray([float(fn(p, c)) for p, c in zip(prompt_texts, completion_texts)], np.float32)

    def _score_with_reward_model(self, rm_params, tokens, segments) -> np.ndarray:
        """The reward model's scalar for each (prompt + completion) sequence, by
        :func:`quark_jax.training.objectives.reward.reward_scores` on its input convention: BOS = 0 first,
        then the sequence, closed by EOS (appended to completions cut by the length limit)."""
        from quark_jax import runs
        from quark_jax.training.objectives.reward import reward_pooling, reward_scores

        _, graphdef = self._reward_model
        pooling = reward_pooling(runs.resolve(self.reward_model_dir, "reward model"))  # as it was trained
        eos = self.run.vocabulary.eos_id
        n, L = tokens.shape
        inputs = np.zeros((n, L + 2), np.int32)
        rm_segments = np.zeros((n, L + 2), np.int32)
        last = np.zeros(n, np.int32)
        for row in range(n):
            seq = tokens[row, : int(segments[row].sum())].tolist()
            if not seq or seq[-1] != eos:
                seq.append(eos)
            inputs[row, 1: len(seq) + 1] = seq
            rm_segments[row, : len(seq) + 1] = 1
            last[row] = len(seq)
        positions = np.broadcast_to(np.arange(L + 2, dtype=np.int32), inputs.shape)
        if not hasattr(self, "_rm_score_fn"):
            self._rm_score_fn = jax.jit(lambda p, t, pos, seg, li: reward_scores(graphdef, p, t, pos, seg, li, pooling))
        return np.asarray(jax.device_get(self._rm_score_fn(rm_params, inputs, positions, rm_segments, last)))

    def prepare(self, params, frozen, batch, step):
        texts = self.prompt_texts("train")
        chosen = [texts[i] for i in batch["prompt_index"] for _ in range(self.group_size)]
        seeds = np.random.SeedSequence([self.run.config.seed, step, 0x990]).generate_state(len(chosen))
        return self.rollout(params, frozen, chosen, seeds)

    def tokens_in(self, batch) -> int:
        return int(np.prod(batch["tokens"].shape))

    # ---- the jitted PPO iteration ----------------------------------------------------------------
    def _forward(self, graphdef, params, batch, with_values: bool):
        """(log π(target), entropy, values) per position, ``[B, L-1]`` each (values None without a head)."""
        body, heads = split_heads(params)
        model = nnx.merge(graphdef, body)
        tokens = batch["tokens"]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        segments = batch["segment_ids"][:, :-1]
        positions = jnp.broadcast_to(jnp.arange(inputs.shape[1], dtype=jnp.int32), inputs.shape)
        logits, _, hidden = model(inputs, positions, segments, return_hidden=True)
        logits = logits.astype(jnp.float32) / self.temperature
        logp = token_logprobs(logits, targets)
        logp_all = jax.nn.log_softmax(logits, axis=-1)
        entropy = -jnp.einsum("BTV,BTV->BT", jnp.exp(logp_all), logp_all)
        values = None
        if with_values:
            h = hidden.astype(jnp.float32)
            if not self.value_grad_to_trunk:
                h = jax.lax.stop_gradient(h)
            values = jnp.einsum("BTD,D->BT", h, heads["value"]["w"]) + heads["value"]["b"]
        return logp, entropy, values

    def make_train_step(self, tx, schedule, skip_nonfinite):
        grpo = self.estimator == "grpo"
        epochs, num_mb = self.ppo_epochs, self.num_minibatches
        seed = self.run.config.seed

        def minibatch_loss(params, frozen, mb):
            logp, entropy, values = self._forward(self.run.graphdef, params, mb, with_values=not grpo)
            mask = mb["action_mask"]
            pg_loss, stats = clipped_policy_loss(logp, mb["old_logp"], mb["advantages"], mask, self.clip_eps)
            ent = masked_mean(entropy, mask)
            loss = pg_loss - self.entropy_coef * ent
            metrics = {"policy_loss": pg_loss, "entropy": ent, **stats}
            if grpo:
                d = mb["ref_logp"] - logp  # k3: exp(d) - d - 1 >= 0, an unbiased estimate of KL(π ‖ π_ref)
                kl_term = masked_mean(jnp.exp(d) - d - 1.0, mask)
                loss = loss + self.kl_coef * kl_term
                metrics["kl_loss"] = kl_term
            else:
                v_loss = clipped_value_loss(values, mb["old_values"], mb["returns"], mask, self.value_clip)
                loss = loss + self.vf_coef * v_loss
                metrics["value_loss"] = v_loss
            return loss, {"loss": loss, **metrics}

        grad_fn = jax.grad(minibatch_loss, has_aux=True)

        def train_step(state: TrainState, frozen, batch):
            mask = batch["action_mask"]
            scores = batch["scores"]
            # The rollout under the pre-update policy and the reference (no gradients).
            old_logp, _, old_values = self._forward(self.run.graphdef, state.params, batch, with_values=not grpo)
            ref_logp, _, _ = self._forward(self.reference_graphdef, frozen["reference"], batch, with_values=False)
            old_logp, ref_logp = jax.lax.stop_gradient(old_logp), jax.lax.stop_gradient(ref_logp)
            seq_kl = jnp.sum((old_logp - ref_logp) * mask, axis=1)  # [B]
            if grpo:
                advantages = group_advantages(scores, self.group_size)[:, None] * mask
                extra = {"ref_logp": ref_logp}
            else:
                old_values = jax.lax.stop_gradient(old_values) * mask
                rewards = token_rewards(old_logp, ref_logp, scores, mask, self.kl_coef)
                advantages, returns = gae(rewards, old_values, mask, self.gamma, self.lam)
                extra = {"old_values": old_values, "returns": returns}
            if self.whiten_advantages and not grpo:
                advantages = whiten(advantages, mask)
            data = {"tokens": batch["tokens"], "segment_ids": batch["segment_ids"], "action_mask": mask,
                    "old_logp": old_logp, "advantages": advantages, **extra}

            # ppo_epochs random partitions into num_minibatches, from (seed, step).
            B = mask.shape[0]
            key = jax.random.fold_in(jax.random.key(seed), state.step)
            perms = jnp.stack([jax.random.permutation(jax.random.fold_in(key, e), B) for e in range(epochs)])
            order = perms.reshape(epochs * num_mb, B // num_mb)

            def update(carry, idx):
                params, opt_state, all_finite = carry
                mb = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), data)
                grads, metrics = grad_fn(params, frozen, mb)
                new_params, new_opt, grad_norm, finite = apply_update(
                    tx, params, opt_state, grads, metrics["loss"], skip_nonfinite)
                return (new_params, new_opt, all_finite & finite), {**metrics, "grad_norm": grad_norm}

            (params, opt_state, finite), per_update = jax.lax.scan(
                update, (state.params, state.opt_state, jnp.array(True)), order)
            metrics = jax.tree.map(jnp.mean, per_update)
            metrics.update({
                "finite": finite,
                "learning_rate": schedule(state.step * epochs * num_mb),
                "reward/mean": jnp.mean(scores), "reward/std": jnp.std(scores),
                "kl": jnp.mean(seq_kl),
                "response_length": jnp.mean(jnp.sum(mask, axis=1)),
                "advantage/mean": masked_mean(advantages, mask),
            })
            if not grpo:
                metrics["value/mean"] = masked_mean(old_values, mask)
            return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

        return train_step

    # ---- evaluation ------------------------------------------------------------------------------
    def evaluate(self, params, frozen):
        """Mean reward of greedy completions of the first ``eval_prompts`` validation prompts."""
        if self.eval_prompts <= 0 or jax.process_count() > 1:
            return {}
        texts = self.prompt_texts("validation")[: self.eval_prompts]
        out = self.rollout(params, frozen, texts, None, greedy=True)
        return {"eval_reward": float(np.mean(out["scores"])),
                "eval_response_length": float(np.mean(out["response_length"]))}
