"""The ``quark`` command: t5x-style gin flags for training, and generation from a run directory.

    quark train --gin_file=configs/runs/pretrain_tiny.gin --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=200
    quark generate --model_dir=/tmp/run --prompt "def fib(n):" --max_new_tokens 64
    quark generate --model_dir=/tmp/run --input_jsonl requests.jsonl --quantize int8 --stop "\n\n" --logprobs
    quark eval --model_dir=/tmp/run --batches 16
    quark quantize --model_dir=/tmp/run --out_dir=/tmp/run_int4 --mode int4
    quark prune --model_dir=/tmp/run --out=/tmp/run_sparse50 --sparsity 0.5 --method magnitude --scope global --recover_steps 50
    quark merge_lora --model_dir=/tmp/sft_lora --out_dir=/tmp/sft_merged
    quark import_hf --hf_dir=/path/to/Llama-3-8B --out_dir=/tmp/llama3 --mesh_shape='fsdp=-1'
    quark plan --gin_file=configs/runs/pretrain.gin --gin_file=configs/models/mixtral_8x7b.gin \
        --mesh_shape='fsdp=-1,expert=8' --num_devices=256 --batch_size=1024 --seq_len=4096
    quark plan --gin_file=configs/models/7b.gin --mesh_shape=fsdp=-1 --batch_size=256 --seq_len=2048 \
        --topology=v5e:16x16      (also compiles the train step for that TPU slice here; needs libtpu)
    quark train ... --compile_only --topology=v5e:4x4   (a launch command compiled for its slice, not run)
    quark train ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I   (multi-host)
    quark serve --model_dir=/tmp/run --port 8000 --log_dir /tmp/serve_logs   (OpenAI-compatible server, chat page at /)
    quark telemetry --log /tmp/serve_logs
    quark rag --model_dir=/tmp/sft --index /tmp/stdlib_index --question "What are the parameters of `json.dumps`?"
    quark embed --model_dir=/tmp/embed --input texts.txt --output vectors.npy --kind query   (float32 [N, dim])
    quark data feedback --feedback /tmp/serve_logs/feedback.jsonl --output /tmp/pairs   (pairs for dpo.gin)
    quark data list
    quark data build --mixture quark_demo --output /tmp/quark_demo_data [--gin_file=cleaning.gin]
    quark data refresh --mixture quark_demo --root /data/quark_demo   (the next version: only unseen documents)
    quark data distill --teacher_dir /tmp/run --out /tmp/run_samples --samples 4096   (a draft's data: distill_spec.gin)
    quark index build --index /tmp/idx --passages passages.jsonl --model_dir=/tmp/run --hnsw   (then add/delete/search/info)
    quark tokenizer train --mixture quark_demo --output tokenizers/quark_demo_4k --vocab_size 4096
    quark runs list|show|diff|register|verify|promote RUN --stage production --baseline evals/baselines/B.json
    quark improve --feedback feedback.jsonl --base /tmp/sft --out /tmp/improved --baseline evals/baselines/B.json

``--gin_file`` and ``--gin.NAME=VALUE`` may repeat; bindings apply after all files, in order. Values are gin
literals, so strings need inner quotes (``--gin.MODEL_DIR="'/tmp/run'"``). ``--gin_search_paths`` (repeatable,
comma-separated) adds directories where gin files and their ``include``s are looked up.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Sequence

from quark_jax import native_stderr

EXIT_CONFIG_ERROR = 2
EXIT_PREEMPTED = 143  # 128 + SIGTERM, so schedulers see the job as interrupted and can requeue it
# `quark train` only:
EXIT_CHECKPOINT_WRITE_ERROR = 74  # EX_IOERR: a checkpoint could not be written (disk full ...); earlier ones kept
EXIT_RUN_DIR_BUSY = 75  # EX_TEMPFAIL: another live run holds MODEL_DIR's writer lease (or took it over)


class _DoesNotFitExit(Exception):
    """``quark plan --topology`` / ``quark train --compile_only``: the TPU compiler refused the step for lack of
    HBM. Printed as one line; exit status 1 (the answer to the question asked, not a usage error)."""


class UsageError(Exception):
    """An ordinary mistake on the command line (a bad value, a missing file): :func:`main` prints it as one
    line, ``quark <command>: <message>``, and exits with :data:`EXIT_CONFIG_ERROR`, without a traceback."""


# ---- output: quiet by default, -v for INFO logs ----------------------------------------------------------
# Lines that native libraries write straight to file descriptor 2 while TensorFlow (seqio's data backend)
# starts: absl's "before InitializeLog" notice and INFO lines (oneDNN, "Could not find cuda drivers", CPU
# features), and the CUDA driver probe that fails on a machine without a GPU. TF_CPP_MIN_LOG_LEVEL does not
# reach them (they are written before TensorFlow reads it, or at ERROR level).
_NATIVE_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] "  # absl INFO
    r"|To enable the following instructions: .*rebuild TensorFlow"
    r"|E\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] (failed call to cuInit|Unable to register cu\w+ factory)"
)


def _start_tensorflow(verbose: int) -> None:
    """Imports TensorFlow (if installed) before the command does, hiding its GPUs, and unless ``verbose``
    drops its start-up lines.

    TensorFlow only feeds data here (seqio), so it must not take GPUs from JAX; hiding them is also what
    keeps it from probing CUDA (the ``failed call to cuInit`` line on a machine without a GPU, printed by
    TensorFlow's CUDA platform, not by JAX). JAX's own platform choice is left alone (no JAX_PLATFORMS), so
    GPU and TPU runs are unaffected."""
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    quiet = native_stderr.filtered(keep=lambda line: not _NATIVE_NOISE.match(line))
    with contextlib.nullcontext() if verbose else quiet:
        import tensorflow as tf

        try:
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError):  # devices already initialised by someone else: leave them
            pass


class _FirstLineOnly(logging.Filter):
    """Quiet mode: an INFO record of ours that spans several lines (the logical-axis-rules table, samples
    after a validation loss) is shortened to its first line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.INFO and record.name.startswith("quark_jax"):
            message = record.getMessage()
            if "\n" in message:
                record.msg, record.args = message.split("\n", 1)[0].rstrip(" :;") + " (more with -v)", None
        return True


def _configure_output(verbose: int) -> None:
    """Quiet (``verbose=0``): warnings, quark_jax's one-line progress and results; ``-v``: every library's
    INFO logs and native start-up lines; ``-vv``: DEBUG."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    root = logging.getLogger()
    if verbose:
        import quark_jax

        if quark_jax._TF_LOG_LEVEL_DEFAULTED:  # the user did not choose one: show TensorFlow's C++ INFO too
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
        for library in ("absl", "jax._src", "orbax", "tensorflow"):  # their DEBUG output is huge
            logging.getLogger(library).setLevel(logging.INFO)
        return
    root.setLevel(logging.WARNING)
    logging.getLogger("quark_jax").setLevel(logging.INFO)
    logging.getLogger("quark_jax.inference").setLevel(logging.WARNING)  # "compiling <bucket key>" lines
    for handler in root.handlers:
        handler.addFilter(_FirstLineOnly())
    try:
        import sentencepiece

        sentencepiece.set_min_log_level(1)  # "precompiled_charsmap is empty" on every tokenizer load
    except (ImportError, AttributeError):
        pass


# ---- argument checks (before anything heavy is imported or loaded) ---------------------------------------
def _check_run_dir(model_dir: str) -> None:
    from quark_jax import runs

    try:
        runs.resolve(model_dir, "--model_dir")
    except runs.RunDirError as e:
        raise UsageError(str(e)) from None


def _check_at_least(args: argparse.Namespace, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise UsageError(f"--{name}={value}: must be >= {minimum}")


def _check_generate_args(args: argparse.Namespace) -> None:
    from quark_jax.inference.generate import check_generation_args

    if args.prompt and args.input_jsonl:
        raise UsageError("--prompt and --input_jsonl both given; pass prompts one way")
    for prompt in args.prompt or []:
        if not prompt:
            raise UsageError("--prompt '' is empty; give some text to continue, e.g. --prompt 'def fib(n):'")
    try:
        check_generation_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.num_beams)
    except ValueError as e:
        raise UsageError(f"--{e}") from e
    _check_at_least(args, 1, "batch_size")
    _check_at_least(args, 0, "step")
    _check_at_least(args, 1, "gamma")
    if args.draft_dir and args.num_beams > 1:
        raise UsageError(f"--draft_dir with --num_beams {args.num_beams}: beam search is not speculative; drop one")


def _read_requests(path: str) -> list[dict]:
    """The ``--input_jsonl`` requests, every line checked; errors name the file and the 1-based line."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UsageError(f"--input_jsonl {path}: no such file") from None
    except OSError as e:
        raise UsageError(f"--input_jsonl {path}: {e.strerror}") from None
    requests = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"--input_jsonl {path} line {number}: not UTF-8 text (bad byte at column {e.start + 1}); "
                             "save the file as UTF-8") from None
        if not line.strip():
            continue
        where = f"--input_jsonl {path} line {number}"
        try:
            request = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must be one object "
                             'such as {"prompt": "def fib(n):"}') from None
        if not isinstance(request, dict) or not isinstance(request.get("prompt"), str):
            raise UsageError(f'{where}: requests need a string "prompt", e.g. {{"prompt": "def fib(n):"}}')
        if not request["prompt"]:
            raise UsageError(f'{where}: the "prompt" is empty')
        for key, minimum in (("max_new_tokens", 1), ("seed", 0)):
            value = request.get(key, minimum)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise UsageError(f'{where}: "{key}" must be a whole number >= {minimum}, not {value!r}')
        requests.append(request)
    if not requests:
        raise UsageError(f"--input_jsonl {path}: no requests in the file")
    return requests


def _split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Pulls ``--gin.NAME=VALUE`` / ``--gin.NAME VALUE`` out of argv; returns (bindings, remaining argv)."""
    bindings, rest = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--gin."):
            name_value = arg[len("--gin."):]
            if "=" not in name_value:
                if i + 1 >= len(args):
                    raise UsageError(f"{arg} needs a value: {arg}=VALUE")
                name_value = f"{name_value}={args[i + 1]}"
                i += 1
            bindings.append(name_value)
        else:
            rest.append(arg)
        i += 1
    return bindings, rest


def _train(args: argparse.Namespace, bindings: list[str]) -> int:
    # SIGTERM before the trainer takes over its handling (start-up), or after it has returned, must not kill the
    # process by default action: it is recorded here. During Trainer.run its own handler checkpoints and stops.
    import signal
    import threading

    sigterms: list[int] = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: sigterms.append(signum))
    # Quiet mode: orbax logs a failed background save with its traceback from two threads; the trainer stops
    # at the next step and reports it in one line (exit 74), so those records are dropped (shown with -v).
    drop_orbax_tracebacks = lambda record: not (
        record.levelno >= logging.ERROR and record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname)
    handlers = [] if args.verbose else list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(drop_orbax_tracebacks)
    try:
        return _train_guarded(args, bindings, sigterms)
    finally:
        for handler in handlers:
            handler.removeFilter(drop_orbax_tracebacks)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _train_guarded(args: argparse.Namespace, bindings: list[str], sigterms: list[int]) -> int:
    if args.compile_only or args.topology:
        return _compile_only(args, bindings)
    from quark_jax import gin_utils
    from quark_jax.training.run_lock import LeaseLostError, RunDirBusyError
    from quark_jax.training.trainer import CheckpointWriteError, NonFiniteLossError, Trainer

    search_paths = [p for group in args.gin_search_paths for p in group.split(",") if p]
    try:
        trainer = Trainer.from_gin(args.gin_file, bindings, search_paths)
    except gin_utils.GinConfigError as e:
        print(f"quark train: gin configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    _start_tensorflow(args.verbose)
    from quark_jax import distributed

    try:
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    except ValueError as e:
        print(f"quark train: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    from quark_jax.training import preemption

    # Multi-host: one host's SIGTERM stops every host here, or the others would wait for it in the run's first
    # collective.
    if preemption.StopAgreement(lambda: bool(sigterms)).now():
        print("quark train: stopped by SIGTERM while starting (nothing trained); re-run the same command",
              file=sys.stderr)
        return EXIT_PREEMPTED
    try:
        summary = trainer.run()
    except NonFiniteLossError as e:
        print(f"quark train: {e}", file=sys.stderr)
        return 1
    except (RunDirBusyError, LeaseLostError) as e:
        print(f"quark train: {e}", file=sys.stderr)
        return EXIT_RUN_DIR_BUSY
    except CheckpointWriteError as e:
        if args.verbose:
            raise
        print(f"quark train: {e.strerror}", file=sys.stderr)
        return EXIT_CHECKPOINT_WRITE_ERROR
    except (ValueError, FileNotFoundError) as e:  # bad configuration found at set-up (named in the message)
        if args.verbose:
            raise
        print(f"quark train: error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if summary.get("preempted"):
        print(f"quark train: stopped by SIGTERM after step {summary['final_step']} (checkpoint saved); "
              "re-run the same command to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    last = summary.get("last_metrics", {})
    parts = [f"step {summary['final_step']}"]
    if "loss" in last:
        parts.append(f"loss {last['loss']:.4f}")
    lm_keys = ("val_loss", "val_perplexity", "val_accuracy") if "val_perplexity" in summary else ()
    if lm_keys:
        parts.append(f"validation loss {summary['val_loss']:.4f} (perplexity {summary['val_perplexity']:.2f})")
    # Post-training objectives report their own held-out figures (accuracy, margins, reward ...).
    parts += [f"{k} {v:.4f}" for k, v in summary.items()
              if k.startswith("val_") and k not in lm_keys
              and isinstance(v, (int, float))]
    print("quark train: done — " + ", ".join(parts) + f"; outputs in {summary['model_dir']}")
    for prompt, text in getattr(trainer, "last_samples", []) or []:
        print(f"--- {prompt!r}\n{prompt}{text}")
    return 0


def _load_for_generation(args: argparse.Namespace, **kwargs):
    """``qj.load`` of ``--model_dir`` at ``--step``, quantized with ``--quantize``; a load error is a usage error."""
    import quark_jax as qj

    try:
        model = qj.load(args.model_dir, step=args.step, **kwargs)
    except (FileNotFoundError, ValueError) as e:
        if args.verbose:
            raise
        raise UsageError(str(e)) from e
    return model.quantize(args.quantize) if args.quantize else model


def _generate(args: argparse.Namespace) -> int:
    # Everything a user can get wrong is checked before the (slow) model load.
    _check_generate_args(args)
    requests = _read_requests(args.input_jsonl) if args.input_jsonl else []
    _check_run_dir(args.model_dir)
    _start_tensorflow(args.verbose)

    if args.draft_dir:
        _check_run_dir(args.draft_dir)
    model = _load_for_generation(args, beyond_context=args.beyond_context)
    try:
        draft = model.draft(args.draft_dir, args.gamma) if args.draft_dir else None
        return _print_generations(args, model, requests, draft)
    except ValueError as e:  # what only the tokenized request shows: e.g. longer than the trained context
        if args.verbose:
            raise
        raise UsageError(str(e)) from e


def _print_generations(args: argparse.Namespace, model, requests: list[dict], draft=None) -> int:
    if args.input_jsonl:
        for start in range(0, len(requests), args.batch_size):
            chunk = requests[start:start + args.batch_size]
            prompts = [r["prompt"] for r in chunk]
            limits = [int(r.get("max_new_tokens", args.max_new_tokens)) for r in chunk]
            seeds = [int(r.get("seed", args.seed + start + i)) for i, r in enumerate(chunk)]
            if args.num_beams > 1:
                texts = model.generate(prompts, max(limits), num_beams=args.num_beams,
                                       length_penalty=args.length_penalty, stop=args.stop or ())
                results = [{"text": t} for t in texts]
            else:
                completions = model.complete(
                    prompts, max_new_tokens=limits, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, seed=seeds, stop=args.stop or (), draft=draft,
                )
                results = [{"text": c.text, "finish_reason": c.finish_reason,
                            **({"logprobs": c.logprobs} if args.logprobs else {})} for c in completions]
            for r, result in zip(chunk, results):
                print(json.dumps({"prompt": r["prompt"], **result}))
        return 0
    prompts = args.prompt or ["def "]
    outputs = model.generator.generate(
        prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed, stop=args.stop or (), num_beams=args.num_beams,
        length_penalty=args.length_penalty, draft=draft,
    )
    for prompt, text in zip(prompts, outputs):
        if len(prompts) > 1:
            print(f"--- {prompt!r}")
        print(prompt + text)
    return 0


def _merge_lora(args: argparse.Namespace) -> int:
    _check_at_least(args, 0, "step")
    _check_run_dir(args.model_dir)
    _start_tensorflow(args.verbose)
    from quark_jax.runs import save_merged_lora as save_merged

    try:
        out = save_merged(args.model_dir, args.out_dir, step=args.step)
    except (FileNotFoundError, ValueError) as e:
        print(f"quark merge_lora: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    print(f"quark merge_lora: {args.model_dir} merged into its base, written to {out} "
          "(a plain run: qj.load, quark generate, INIT_FROM, TEACHER_DIR read it)")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    _check_at_least(args, 1, "group_size")
    _check_at_least(args, 0, "step")
    _check_run_dir(args.model_dir)
    _start_tensorflow(args.verbose)
    from quark_jax.runs import save_quantized

    try:
        out = save_quantized(args.model_dir, args.out_dir, args.mode, args.group_size, step=args.step)
    except FileNotFoundError as e:
        print(f"quark quantize: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    print(f"quark quantize: {args.mode} checkpoint of {args.model_dir} written to {out} (qj.load / quark generate read it)")
    return 0


def _prune(args: argparse.Namespace) -> int:
    _check_at_least(args, 0, "step", "recover_steps")
    _check_at_least(args, 1, "recover_batch_size")
    sparsity = 0.5 if args.sparsity is None else args.sparsity
    if not 0.0 <= sparsity < 1.0:
        raise UsageError(f"--sparsity {sparsity}: must be in [0, 1), the fraction of block weights set to zero")
    if args.method == "2:4" and sparsity != 0.5:
        raise UsageError(f"--method 2:4 removes exactly half the weights; drop --sparsity {sparsity} (or pass 0.5)")
    if args.method == "2:4" and args.scope == "global":
        raise UsageError("--scope global does not apply to --method 2:4 (it prunes within groups of 4 weights)")
    if args.recover_learning_rate <= 0:
        raise UsageError(f"--recover_learning_rate {args.recover_learning_rate}: must be > 0")
    _check_run_dir(args.model_dir)
    _start_tensorflow(args.verbose)
    from quark_jax.training.prune_recovery import prune_and_recover

    try:
        out = prune_and_recover(args.model_dir, args.out, sparsity, args.method, args.scope, args.recover_steps,
                                step=args.step, learning_rate=args.recover_learning_rate,
                                mixture_or_task_name=args.mixture_or_task_name, batch_size=args.recover_batch_size)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    recovered = f", then {args.recover_steps} recovery steps" if args.recover_steps else ""
    print(f"quark prune: {args.method} {sparsity:.0%} ({args.scope}) of {args.model_dir}{recovered}, written to {out} "
          "(qj.load, quark generate and INIT_FROM read it)")
    return 0


def _import_hf(args: argparse.Namespace) -> int:
    from quark_jax.runs import import_hf

    try:
        out = import_hf(args.hf_dir, args.out_dir, args.mesh_shape)
    except (FileNotFoundError, ValueError, KeyError) as e:  # SafetensorsError and RunDirError included
        print(f"quark import_hf: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    print(f"quark import_hf: {args.hf_dir} written to {out} as a run directory "
          "(qj.load, quark generate and INIT_FROM read it)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    if args.mode == "pairwise" or args.tasks:
        return _eval_tasks(args)
    if args.model_dir is None:
        raise UsageError("--model_dir is required (the run to evaluate)")
    _check_at_least(args, 1, "batch_size")
    _check_at_least(args, 2, "sequence_length")
    _check_at_least(args, 0, "batches", "step")
    _check_run_dir(args.model_dir)
    _start_tensorflow(args.verbose)
    import seqio

    from quark_jax.data import catalogue

    try:
        catalogue.register_all()
    except catalogue.DataDirError as e:
        raise UsageError(str(e)) from None
    names = sorted({*seqio.TaskRegistry.names(), *seqio.MixtureRegistry.names()})
    if args.mixture_or_task_name not in names:
        import difflib

        close = difflib.get_close_matches(args.mixture_or_task_name, names, n=1)
        hint = f"did you mean {close[0]}?" if close else "`quark data list` shows the registered names"
        raise UsageError(f"--mixture_or_task_name {args.mixture_or_task_name!r} is not a registered task or "
                         f"mixture; {hint}")
    import quark_jax as qj
    from quark_jax.evaluation.perplexity import perplexity

    try:
        model = qj.load(args.model_dir, step=args.step)
        result = perplexity(
            model, args.mixture_or_task_name, args.split, args.sequence_length, args.batch_size, args.batches
        )
    except (FileNotFoundError, ValueError) as e:
        if args.verbose:
            raise
        raise UsageError(str(e)) from e
    print(json.dumps({"model_dir": args.model_dir, "step": model.step, **result}))
    return 0


def _eval_tasks(args: argparse.Namespace) -> int:
    """``quark eval --tasks ...`` (the task suites, report, baseline gate) and ``quark eval pairwise ...``."""
    from quark_jax.evaluation import cli_main, pairwise

    _check_at_least(args, 1, "batch_size", "limit")
    if args.mode == "pairwise" and args.read:
        if not args.ratings:
            raise UsageError("--read DIR needs --ratings FILE (the ratings.json the sheet saved)")
        return pairwise.pairwise_read_main(args.read, args.ratings)
    if args.mode == "pairwise":
        missing = [f"--{name}" for name in ("a", "b", "task", "output") if not getattr(args, name)]
        if missing:
            raise UsageError(f"pairwise needs {', '.join(missing)} (or --read DIR --ratings FILE)")
        for run in (args.a, args.b):
            _check_run_dir(run)
        runner = lambda: cli_main.pairwise_main(args.a, args.b, args.task, args.output,  # noqa: E731
                                                args.limit or 50, args.seed, args.batch_size)
    else:
        if args.model_dir is None:
            raise UsageError("--model_dir is required (the run to evaluate)")
        _check_run_dir(args.model_dir)
        steps = None
        if args.steps:
            try:
                steps = [int(s) for s in args.steps.split(",") if s.strip()]
            except ValueError:
                raise UsageError(f"--steps {args.steps!r}: must be checkpoint steps separated by commas, e.g. 20,40") from None
        runner = lambda: cli_main.eval_tasks_main(  # noqa: E731
            args.model_dir, args.tasks, args.output, args.batch_size, args.limit, steps, args.baseline,
            args.write_baseline, args.seed, not args.no_progress)
    _start_tensorflow(args.verbose)
    try:
        return runner()
    except (FileNotFoundError, ValueError) as e:
        if args.verbose:
            raise
        raise UsageError(str(e)) from e


RUN_DEFAULTS = "configs/runs/pretrain.gin"  # what `quark plan` assumes when given a model's gin file alone


def _plan_config(args: argparse.Namespace, bindings: list[str]):
    """The TrainConfig ``quark plan`` looks at: the gin files (after :data:`RUN_DEFAULTS` when they bind no
    run, e.g. ``configs/models/7b.gin`` alone), with --mesh_shape, --batch_size and --seq_len applied."""
    import dataclasses

    from quark_jax import gin_utils

    search_paths = [p for group in args.gin_search_paths for p in group.split(",") if p]
    # A plan needs no run directory or step count: fill the run file's required macros unless given.
    defaults = [b for b in ("MODEL_DIR='/tmp/quark_plan'", "TRAIN_STEPS=1")
                if not any(x.split("=")[0].strip() == b.split("=")[0] for x in bindings)]
    files = list(args.gin_file)
    try:
        gin_utils.parse(files, bindings, search_paths, defaults=defaults)
        if not gin_utils.binds_a_run():
            gin_utils.parse([RUN_DEFAULTS, *files], bindings, search_paths, defaults=defaults)
        config = gin_utils.build_train_config()
    except gin_utils.GinConfigError as e:
        raise UsageError(f"gin configuration error: {e}") from None
    data = config.data
    if args.batch_size or args.seq_len:
        lengths = {**data.task_feature_lengths, "targets": args.seq_len or data.task_feature_lengths["targets"]}
        data = dataclasses.replace(data, batch_size=args.batch_size or data.batch_size, task_feature_lengths=lengths)
    return dataclasses.replace(config, mesh_shape=args.mesh_shape or config.mesh_shape, data=data)


def _load_topology(name: str):
    from quark_jax.topology import TopologyError, topology

    try:
        return topology(name)
    except TopologyError as e:
        raise UsageError(str(e)) from None


def _compile_for(config, topology, verbose: int):
    """Compiles ``config``'s train step for ``topology``; a mesh or batch the slice cannot take is a
    UsageError naming it."""
    from quark_jax.plan import check_batch_split
    from quark_jax.sharding import parse_mesh_shape
    from quark_jax.training.aot import DoesNotFit, compile_for_topology

    try:
        sizes = parse_mesh_shape(config.mesh_shape, topology.num_devices)
        check_batch_split(sizes, config.data.batch_size, config.optimizer.grad_accum_steps)
    except ValueError as e:
        raise UsageError(f"{e} (on {topology.name}: {topology.num_devices} devices)") from None
    print(f"compiling the train step for {topology.name} ({topology.num_devices} devices) ...", file=sys.stderr,
          flush=True)
    try:
        return compile_for_topology(config, topology)
    except DoesNotFit as e:
        raise _DoesNotFitExit(str(e)) from None
    except ValueError as e:
        if verbose:
            raise
        raise UsageError(str(e)) from None


def _plan(args: argparse.Namespace, bindings: list[str]) -> int:
    from quark_jax.plan import plan

    config = _plan_config(args, bindings)
    topology = _load_topology(args.topology) if args.topology else None
    mesh_shape = config.mesh_shape
    num_devices = args.num_devices
    if topology is not None:
        if num_devices is not None and num_devices != topology.num_devices:
            raise UsageError(f"--num_devices={num_devices} but --topology {topology.name} has "
                             f"{topology.num_devices} devices; drop --num_devices")
        num_devices = topology.num_devices
    if num_devices is None:
        if "-1" in mesh_shape:
            raise UsageError(f"MESH_SHAPE={mesh_shape!r} has a -1 axis: pass --num_devices or --topology")
        num_devices = 1
        for part in filter(None, mesh_shape.split(",")):
            num_devices *= int(part.split("=")[1])
    try:
        result = plan(
            config.model, mesh_shape, num_devices, batch_size=config.data.batch_size,
            seq_len=config.data.task_feature_lengths["targets"], peak_flops_per_s=args.peak_flops_per_s,
            mfu=args.mfu, grad_accum_steps=config.optimizer.grad_accum_steps,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not args.json:
        print(result.describe(), flush=True)
    report = _compile_for(config, topology, args.verbose) if topology is not None else None
    if args.json:
        print(json.dumps({**result.to_dict(), **({"compiled": report.to_dict()} if report else {})}))
    elif report is not None:
        print(report.describe(planned_bytes=result.total_bytes))
    return 0 if report is None or report.fits else 1


def _compile_only(args: argparse.Namespace, bindings: list[str]) -> int:
    """``quark train --compile_only --topology NAME``: the launch command's configuration compiled for the
    slice, nothing run and nothing written (MODEL_DIR is not touched)."""
    from quark_jax import gin_utils
    from quark_jax.plan import plan

    if not args.topology:
        raise UsageError("--compile_only needs --topology NAME, the slice to compile for (e.g. v5e:16x16)")
    if not args.compile_only:
        raise UsageError(f"--topology {args.topology} only compiles: add --compile_only (a training run uses "
                         "the devices of the machine it runs on)")
    search_paths = [p for group in args.gin_search_paths for p in group.split(",") if p]
    try:
        gin_utils.parse(args.gin_file, bindings, search_paths)
        config = gin_utils.build_train_config()
    except gin_utils.GinConfigError as e:
        raise UsageError(f"gin configuration error: {e}") from None
    topology = _load_topology(args.topology)
    report = _compile_for(config, topology, args.verbose)
    estimate = plan(config.model, config.mesh_shape, topology.num_devices, config.data.batch_size,
                    config.data.task_feature_lengths["targets"], grad_accum_steps=config.optimizer.grad_accum_steps)
    print(report.describe(planned_bytes=estimate.total_bytes))
    return 0 if report.fits else 1


def _data(args: argparse.Namespace, bindings: list[str]) -> int:
    if args.data_command == "feedback":
        from quark_jax.serving import feedback

        try:
            return feedback.feedback_to_pairs_main(args.feedback, args.output, args.validation_fraction, args.seed)
        except ValueError as e:
            raise UsageError(str(e)) from None
    _start_tensorflow(args.verbose)
    if args.data_command == "distill":
        return _data_distill(args, bindings)
    if args.data_command == "list":
        from quark_jax.data import catalogue

        try:
            catalogue.register_all()
        except catalogue.DataDirError as e:
            print(f"quark data list: {e}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
        rows = catalogue.registry_table()
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['type']:8} {r['name']:{width}}  {r['source']}  {r['splits']}".rstrip())
        return 0
    import gin

    from quark_jax import gin_utils
    from quark_jax.data import build, filters

    try:
        gin_utils.parse(args.gin_file or [], bindings)
        config = filters.cleaning_config()
        if args.mixture is None:  # the gin files declare it: quark_jax.data.source_mixture
            from quark_jax.data import sources

            args.mixture = sources.source_mixture()
    except (gin_utils.GinConfigError, ValueError, TypeError) as e:
        print(f"quark data {args.data_command}: gin configuration error: {e}. Pass --mixture NAME, or a --gin_file that "
              "binds quark_jax.data.source_mixture (see configs/data/local_sources.gin).", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.data_command == "refresh":
        return _data_refresh(args, config)
    try:
        report = build.build(args.mixture, args.output, name=args.name, config=config, num_shards=args.num_shards,
                             progress=not args.no_progress, packing_length=args.packing_length)
    except (ValueError, FileNotFoundError) as e:
        print(f"quark data build: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    finally:
        gin.clear_config()
    print(json.dumps({"name": report["name"], "output": report["output"], "seconds": report["seconds"],
                      "packing_efficiency": report.get("packing", {}).get("efficiency"), **report["totals"]}))
    print(f"quark data build: report in {report['output']}/report.md; train with "
          f"--gin.MIXTURE_OR_TASK_NAME=\"'{report['name']}'\" and QUARK_DATA_DIRS={report['output']}, "
          f"or --gin_file={report['output']}/data.gin")
    return 0


def _data_distill(args: argparse.Namespace, bindings: list[str]) -> int:
    """``quark data distill``: a teacher run's own samples as training data (quark_jax/distill_samples.py)."""
    from quark_jax import distill_samples

    if bindings:
        raise UsageError("--gin.* flags do not apply to `quark data distill`; drop them")
    try:
        return distill_samples.distill_data_main(args)
    except (ValueError, FileNotFoundError) as e:  # a missing run, bad values, too few prompts: one line
        if args.verbose:
            raise
        raise UsageError(str(e)) from None


def _server_guard(args: argparse.Namespace, model_version: str):
    """The server's guardrails for ``--guardrails`` (with ``--guardrails_config``, ``--audit_log``), else None."""
    if not args.guardrails:
        return None
    from quark_jax.safety.audit import AuditLog
    from quark_jax.safety.guardrails import from_gin_file
    from quark_jax.serving.guard import ServerGuard

    try:
        guardrails = from_gin_file(args.guardrails_config)
    except ValueError as e:
        raise UsageError(f"--guardrails_config {e}") from None
    return ServerGuard(guardrails, model_version, AuditLog(args.audit_log) if args.audit_log else None)


def _data_refresh(args: argparse.Namespace, config) -> int:
    """``quark data refresh``: the next data version of ``--root`` (see quark_jax/data/refresh.py)."""
    import gin

    from quark_jax.data import refresh

    try:
        report = refresh.refresh(args.mixture, args.root, name=args.name, config=config, num_shards=args.num_shards,
                                 progress=not args.no_progress)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"quark data refresh: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    finally:
        gin.clear_config()
    print(json.dumps({"name": report["name"], "version": report["version"], "parent": report["parent"],
                      "content_hash": report["content_hash"], "output": report["output"],
                      "seen_documents": report["seen_documents"], **report["totals"]}))
    return 0


def _serve(args: argparse.Namespace) -> int:
    _check_at_least(args, 1, "max_slots", "max_queue", "max_n", "decode_block", "gamma")
    _check_at_least(args, 2, "max_seq_len")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: must be in 1..65535")
    if not args.guardrails and (args.guardrails_config or args.audit_log):
        raise UsageError("--guardrails_config and --audit_log need --guardrails")
    if args.guardrails_config and not os.path.isfile(args.guardrails_config):
        raise UsageError(f"--guardrails_config {args.guardrails_config}: no such file")
    _check_run_dir(args.model_dir)
    if args.draft_dir:
        _check_run_dir(args.draft_dir)
    from quark_jax.serving import server

    try:
        server.check_port(args.host, args.port)
    except ValueError as e:
        raise UsageError(str(e)) from None
    _start_tensorflow(args.verbose)
    from quark_jax.serving.app import ServerConfig

    model = _load_for_generation(args)
    max_seq_len = args.max_seq_len or min(model.trained_context or 2048, 2048)
    if model.trained_context and max_seq_len > model.trained_context:
        print(f"quark serve: --max_seq_len {max_seq_len} is beyond the {model.trained_context}-token context "
              "the model was trained on; answers past it may degrade", file=sys.stderr)
    name = args.served_model_name or server.default_model_name(args.model_dir)
    try:
        draft = model.draft(args.draft_dir, args.gamma) if args.draft_dir else None
    except ValueError as e:  # another tokenizer
        raise UsageError(str(e)) from None
    engine = server.build_engine(model, args.max_slots, max_seq_len, args.max_queue, args.decode_block, draft)
    config = ServerConfig(model_name=name, log_dir=args.log_dir, log_prompts=args.log_prompts, max_n=args.max_n,
                          guard=_server_guard(args, f"{name}@step{model.step}"))
    url = f"http://{args.host}:{args.port}"
    drafting = f", draft {args.draft_dir} proposing {args.gamma} tokens per target call" if draft else ""
    print(f"quark serve: {name} on {url} ({args.max_slots} slots of {max_seq_len} tokens{drafting}); compiling, "
          f"{url}/ready answers 200 when done", flush=True)
    server.serve(engine, model.tokenizer, config, args.host, args.port,
                 on_ready=lambda s: print(f"quark serve: ready in {s:.0f} s — chat at {url}/, OpenAI API at "
                                          f"{url}/v1", flush=True))
    return 0


def _rag(args: argparse.Namespace) -> int:
    from quark_jax.retrieval import rag_cli

    try:
        rag_cli.check_arguments(args)
        _check_run_dir(args.model_dir)
        _start_tensorflow(args.verbose)
        return rag_cli.run(args, _load_for_generation)
    except rag_cli.RagUsageError as e:
        raise UsageError(str(e)) from None


def _telemetry(args: argparse.Namespace) -> int:
    from quark_jax.serving import telemetry

    try:
        return telemetry.telemetry_main(args.log, args.png)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _embed(args: argparse.Namespace) -> int:
    from quark_jax.retrieval import cli_main

    _check_run_dir(args.model_dir)
    _start_tensorflow(args.verbose)  # the run's tokenizer loads seqio: its start-up lines are dropped
    try:
        result = cli_main.embed_main(args.model_dir, args.input, args.output, args.kind, args.batch_size, args.step)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    print(json.dumps(result))
    return 0


def _tokenizer(args: argparse.Namespace) -> int:
    _start_tensorflow(args.verbose)
    from quark_jax.data import tokenizer_training

    try:
        report = tokenizer_training.train(args.mixture, args.output, args.vocab_size, args.model_type, args.max_chars)
    except ValueError as e:
        print(f"quark tokenizer train: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    print(tokenizer_training.main_report(report))
    return 0


def _agent(args: argparse.Namespace) -> int:
    from quark_jax.agents import cli_main as agent_cli

    try:
        agent_cli.check_arguments(args)
        if args.model_dir is not None:
            _check_run_dir(args.model_dir)
            _start_tensorflow(args.verbose)
        return agent_cli.run(args, _load_for_generation)
    except agent_cli.AgentUsageError as e:
        raise UsageError(str(e)) from None


def _tune(args: argparse.Namespace, bindings: list[str]) -> int:
    from quark_jax.tuning import cli_main as tune_cli

    try:
        return tune_cli.run(args, bindings)
    except (tune_cli.TuneUsageError, ValueError) as e:
        raise UsageError(str(e)) from None


def _kg(args: argparse.Namespace) -> int:
    from quark_jax.knowledge import cli_main

    try:
        return cli_main.run(args)
    except ValueError as e:
        raise UsageError(str(e)) from None


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``quark generate: the following arguments are required: --model_dir
    (see quark generate --help)``, exit status 2, instead of the usage block."""

    def error(self, message: str):
        self.exit(EXIT_CONFIG_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


TRAIN_EPILOG = """\
gin flags:
  --gin_file=FILE       a gin file (repeatable; later files override earlier ones), e.g.
                        configs/runs/pretrain_tiny.gin; `include`s are looked up in the working directory,
                        the repository and --gin_search_paths
  --gin.NAME=VALUE      a binding applied after all files (repeatable): a macro (--gin.TRAIN_STEPS=200) or a
                        parameter (--gin.quark_jax.OptimizerConfig.learning_rate=1e-3). VALUE is a gin
                        literal, so strings need inner quotes: --gin.MODEL_DIR="'/tmp/run'"
                        (--gin.MODEL_DIR=/tmp/run is an error). A macro that no gin file uses is an error.

required macros (configs/runs/pretrain.gin):
  MODEL_DIR             where checkpoints, metrics.jsonl, config.gin and plots go (a quoted string)
  TRAIN_STEPS           number of optimizer steps

example:
  quark train --gin_file=configs/runs/pretrain_tiny.gin --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=200
"""


def _build_parser() -> argparse.ArgumentParser:
    from quark_jax import __version__

    parser = _Parser(prog="quark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        from importlib.metadata import version

        jax_version = f"jax {version('jax')}, "
    except Exception:  # noqa: BLE001 -- not installed as a distribution: the version line stays useful
        jax_version = ""
    python = ".".join(map(str, sys.version_info[:3]))
    parser.add_argument("--version", action="version", version=f"quark {__version__} ({jax_version}Python {python})")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="INFO logs of every library and native start-up messages; -vv: DEBUG")
    # -v also after the subcommand (`quark train -v ...`); a separate dest, since a subparser's default would
    # overwrite the value the main parser read.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", dest="sub_verbose", action="count", default=0,
                        help="INFO logs of every library and native start-up messages; -vv: DEBUG")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    train = add("train", help="train from gin files (plus --gin.NAME=VALUE bindings)",
                description="Train a model from gin files and --gin.NAME=VALUE bindings.", epilog=TRAIN_EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--gin_file", action="append", required=True,
                       help="gin file; repeatable (see 'gin flags' below)")
    train.add_argument("--gin_search_paths", action="append", default=[], help="comma-separated dirs; repeatable")
    train.add_argument("--coordinator_address", default=None,
                       help="multi-host: HOST:PORT of process 0 (or env QUARK_COORDINATOR_ADDRESS)")
    train.add_argument("--num_processes", type=int, default=None, help="multi-host: processes in the job")
    train.add_argument("--process_id", type=int, default=None, help="multi-host: this process, 0..N-1")
    train.add_argument("--compile_only", action="store_true",
                       help="with --topology: compile the train step for that TPU slice and print XLA's memory "
                            "per device (exit 1 if it does not fit); runs and writes nothing")
    train.add_argument("--topology", default=None, help="with --compile_only: a TPU slice, e.g. v5e:16x16 "
                       "(needs libtpu; any machine)")

    pl = add("plan", help="parameters, FLOPs, per-device memory and step time of a config on a mesh")
    pl.add_argument("--gin_file", action="append", required=True,
                    help="gin file; repeatable. A model's file alone (configs/models/7b.gin) is planned with the "
                         "defaults of configs/runs/pretrain.gin")
    pl.add_argument("--gin_search_paths", action="append", default=[], help="comma-separated dirs; repeatable")
    pl.add_argument("--mesh_shape", default=None, help="e.g. 'fsdp=-1,tensor=4' (default: the config's MESH_SHAPE)")
    pl.add_argument("--num_devices", type=int, default=None,
                    help="devices in the job (needed when an axis is -1, unless --topology gives them)")
    pl.add_argument("--batch_size", type=int, default=None, help="global batch (default: the config's)")
    pl.add_argument("--seq_len", type=int, default=None, help="sequence length (default: the config's)")
    pl.add_argument("--peak_flops_per_s", type=float, default=1.97e14, help="per device (default: TPU v5e bf16)")
    pl.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed for the step time")
    pl.add_argument("--topology", default=None,
                    help="also compile the real train step for this TPU slice (e.g. v5e:16x16; needs libtpu, runs "
                         "on any machine) and print XLA's memory per device beside the plan; exit 1 if it does "
                         "not fit in HBM")
    pl.add_argument("--json", action="store_true", help="one JSON object instead of text")

    gen = add("generate", help="continue prompts with a trained run")
    gen.add_argument("--model_dir", required=True)
    gen.add_argument("--prompt", action="append", help="prompt text; repeatable")
    gen.add_argument("--max_new_tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top_k", type=int, default=0, help="0 = off")
    gen.add_argument("--top_p", type=float, default=1.0, help="1 = off")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    gen.add_argument("--input_jsonl", help='requests, one {"prompt": ..., "max_new_tokens"?, "seed"?} per line; '
                     "prints one JSON result per line")
    gen.add_argument("--batch_size", type=int, default=8, help="requests per compiled call with --input_jsonl")
    gen.add_argument("--stop", action="append", help="stop string; repeatable")
    gen.add_argument("--num_beams", type=int, default=1, help=">1 = beam search")
    gen.add_argument("--length_penalty", type=float, default=1.0, help="beam score = logp / length**this")
    gen.add_argument("--quantize", choices=("int8", "int4"), help="weight-only quantization before generating")
    gen.add_argument("--beyond_context", choices=("error", "warn"), default="error",
                     help="a prompt + max_new_tokens longer than the run's trained context: refuse (default) or warn")
    gen.add_argument("--logprobs", action="store_true", help="with --input_jsonl: add chosen-token logprobs")
    gen.add_argument("--draft_dir", help="a small run sharing the tokenizer: exact speculative decoding "
                     "(same greedy output, same sampling distribution; docs/speculative.md)")
    gen.add_argument("--gamma", type=int, default=4, help="with --draft_dir: draft tokens per target call")

    qz = add("quantize", help="write a weight-only int8/int4 copy of a trained run")
    qz.add_argument("--model_dir", required=True)
    qz.add_argument("--out_dir", required=True)
    qz.add_argument("--mode", choices=("int8", "int4"), default="int8")
    qz.add_argument("--group_size", type=int, default=32, help="int4 group size along the contraction axis")
    qz.add_argument("--step", type=int, default=None)

    pr = add("prune", help="zero the smallest block weights (magnitude or 2:4), optionally fine-tune to recover")
    pr.add_argument("--model_dir", required=True)
    pr.add_argument("--out", required=True, help="the pruned run directory to write (new or empty)")
    pr.add_argument("--sparsity", type=float, default=None, help="fraction of block weights set to zero (default 0.5)")
    pr.add_argument("--method", choices=("magnitude", "2:4"), default="magnitude",
                    help="2:4: in every 4 consecutive input weights the 2 largest stay (50%%)")
    pr.add_argument("--scope", choices=("layer", "global"), default="layer",
                    help="magnitude ranking per weight matrix, or one ranking over the whole model")
    pr.add_argument("--recover_steps", type=int, default=0,
                    help="then fine-tune this many steps with the zeros held at zero (0: one-shot)")
    pr.add_argument("--recover_learning_rate", type=float, default=3e-4)
    pr.add_argument("--recover_batch_size", type=int, default=8)
    pr.add_argument("--mixture_or_task_name", default="stdlib", help="the recovery fine-tune's data")
    pr.add_argument("--step", type=int, default=None, help="checkpoint step to prune (default: newest)")

    ml = add("merge_lora", help="merge a LoRA run's adapters into its base: a plain run directory")
    ml.add_argument("--model_dir", required=True, help="the LoRA run (configs/runs/lora.gin)")
    ml.add_argument("--out_dir", required=True)
    ml.add_argument("--step", type=int, default=None, help="adapter checkpoint step (default: newest)")

    ih = add("import_hf", help="a Hugging Face Llama/Mixtral directory (safetensors) as a run directory")
    ih.add_argument("--hf_dir", required=True, help="config.json, model.safetensors(.index.json), tokenizer.json")
    ih.add_argument("--out_dir", required=True, help="the run directory to write (must hold no checkpoints)")
    ih.add_argument("--mesh_shape", default="data=-1",
                    help="mesh the weights are read onto, shard by shard, e.g. 'fsdp=-1,tensor=4'")

    ev = add("eval", help="task suites with confidence intervals (--tasks), validation perplexity, pairwise sheets",
             description="Without --tasks: validation loss and perplexity on a seqio task. With --tasks: the task "
                         "suites (evals/tasks/*.yaml or your own YAML), a report, and a regression gate. "
                         "`quark eval pairwise`: a blind side-by-side sheet of two runs for people to rate.")
    ev.add_argument("mode", nargs="?", choices=("pairwise",), help="pairwise: human side-by-side rating")
    ev.add_argument("--model_dir", default=None)
    ev.add_argument("--tasks", default=None, help="'all', task names or YAML paths, comma-separated")
    ev.add_argument("--output", default=None, help="report directory (default MODEL_DIR/eval)")
    ev.add_argument("--limit", type=int, default=None, help="first N examples of each task")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--steps", default=None, help="checkpoints to evaluate, e.g. 20,40 (curves in the report)")
    ev.add_argument("--baseline", default=None, help="results JSON to gate on: exit 1 naming each regression")
    ev.add_argument("--write_baseline", default=None, help="write these results as a baseline file")
    ev.add_argument("--no_progress", action="store_true")
    ev.add_argument("--a", default=None, help="pairwise: run A")
    ev.add_argument("--b", default=None, help="pairwise: run B")
    ev.add_argument("--task", default=None, help="pairwise: one generation task")
    ev.add_argument("--read", default=None, help="pairwise: a sheet directory to score")
    ev.add_argument("--ratings", default=None, help="pairwise: the ratings.json saved from the sheet")
    ev.add_argument("--mixture_or_task_name", default="stdlib")
    ev.add_argument("--split", default="validation")
    ev.add_argument("--sequence_length", type=int, default=256)
    ev.add_argument("--batch_size", type=int, default=8)
    ev.add_argument("--batches", type=int, default=0, help="0 = the whole split")
    ev.add_argument("--step", type=int, default=None)

    tune = add("tune", help="hyper-parameter search (Optuna) or population-based training over gin bindings")
    from quark_jax.tuning import cli_main as tune_cli

    tune_cli.add_arguments(tune)

    data = sub.add_parser("data", help="list registered tasks and mixtures; build cleaned shards")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    data_sub.add_parser("list", parents=[common], help="registered seqio tasks and mixtures")
    build = data_sub.add_parser("build", parents=[common], help="clean a mixture offline into TFRecord shards and a report")
    build.add_argument("--mixture", default=None,
                       help="registered mixture or task (see `quark data list`); default: the one a --gin_file "
                            "declares with quark_jax.data.source_mixture")
    build.add_argument("--output", required=True, help="output directory")
    build.add_argument("--name", default=None, help="mixture name of the built data (default <mixture>_clean)")
    build.add_argument("--num_shards", type=int, default=4)
    build.add_argument("--gin_file", action="append", default=[], help="gin file with quark_jax.data.* thresholds")
    build.add_argument("--no_progress", action="store_true", help="no progress bar")
    build.add_argument("--packing_length", type=int, default=256,
                       help="report the packing efficiency at this sequence length (0: skip)")

    refresh = data_sub.add_parser("refresh", parents=[common],
                                  help="the next data version: new documents only, deduplicated against every "
                                       "earlier version, cleaned as in the build")
    refresh.add_argument("--mixture", default=None, help="registered mixture or task (as for build)")
    refresh.add_argument("--root", required=True, help="the data root holding the versions v0001, v0002, ...")
    refresh.add_argument("--name", default=None, help="base mixture name (default <mixture>_clean; versions "
                                                       "register as <name>_v<N>)")
    refresh.add_argument("--num_shards", type=int, default=4)
    refresh.add_argument("--gin_file", action="append", default=[], help="gin file with quark_jax.data.* thresholds")
    refresh.add_argument("--no_progress", action="store_true", help="no progress bar")

    dd = data_sub.add_parser("distill", parents=[common],
                             help="a teacher run's own samples on prompts of its corpus: the data of a speculative "
                                  "draft (configs/runs/distill_spec.gin, DistillSpec)")
    dd.add_argument("--teacher_dir", required=True, help="the teacher run (the target the draft will serve)")
    dd.add_argument("--out", required=True, help="the samples directory to write (new or empty)")
    dd.add_argument("--samples", type=int, default=1024, help="training samples (prompts of the train split)")
    dd.add_argument("--validation_samples", type=int, default=64, help="samples on validation-split prompts")
    dd.add_argument("--max_new_tokens", type=int, default=112, help="tokens generated per sample")
    dd.add_argument("--prompt_tokens", type=int, default=16, help="corpus tokens per prompt (the prefix k)")
    dd.add_argument("--temperature", type=float, default=1.0,
                    help="1: the teacher's own distribution (default); 0: greedy")
    dd.add_argument("--seed", type=int, default=0, help="prompt order and sampling; row i samples with seed+i")
    dd.add_argument("--batch_size", type=int, default=32, help="prompts per compiled generate call")
    dd.add_argument("--mixture", default=None, help="prompts from this mixture (default: the teacher's own)")
    dd.add_argument("--step", type=int, default=None, help="teacher checkpoint step (default: newest)")
    dd.add_argument("--no_progress", action="store_true", help="no progress bar")

    fb = data_sub.add_parser("feedback", parents=[common],
                             help="turn `quark serve` feedback into preference pairs for configs/runs/dpo.gin")
    fb.add_argument("--feedback", required=True, help="the server's LOG_DIR/feedback.jsonl")
    fb.add_argument("--output", required=True, help="directory for train.jsonl and validation.jsonl")
    fb.add_argument("--validation_fraction", type=float, default=0.1)
    fb.add_argument("--seed", type=int, default=0)

    serve = add("serve", help="an OpenAI-compatible HTTP server (continuous batching, streaming, chat page)",
                description="Serve a run directory over HTTP: /v1/completions, /v1/chat/completions, /tokenize, "
                            "/metrics, /health, /ready, and a chat page at /.")
    serve.add_argument("--model_dir", required=True, help="run directory (quark train, quantize, import_hf ...)")
    serve.add_argument("--draft_dir", help="a small run sharing the tokenizer: every decode call runs exact "
                       "speculative rounds (same greedy output, same sampling distribution; /metrics counts them)")
    serve.add_argument("--gamma", type=int, default=4, help="with --draft_dir: draft tokens per target call")
    serve.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    serve.add_argument("--quantize", choices=("int8", "int4"), help="weight-only quantization before serving")
    serve.add_argument("--max_slots", type=int, default=8, help="decode slots: requests generated at once")
    serve.add_argument("--max_seq_len", type=int, default=None,
                       help="tokens per slot, prompt + answer (default: the trained context, at most 2048)")
    serve.add_argument("--max_queue", type=int, default=256, help="requests waiting for a slot; beyond: 429")
    serve.add_argument("--decode_block", type=int, default=8,
                       help="tokens per slot per compiled decode call (1 while a waiting request needs a slot)")
    serve.add_argument("--max_n", type=int, default=8, help="most choices (n) per request")
    serve.add_argument("--served_model_name", default=None, help="the model id clients use (default: the dir name)")
    serve.add_argument("--log_dir", default=None,
                       help="request log (requests.jsonl, rotated) and feedback.jsonl; default: none written")
    serve.add_argument("--log_prompts", action="store_true", help="put prompt text into the request log")
    serve.add_argument("--guardrails", action="store_true",
                       help="input and output rails (blocked input: 400 content_filter; blocked output: "
                            "finish_reason content_filter); see docs/safety.md")
    serve.add_argument("--guardrails_config", default=None,
                       help="gin file binding quark_jax.safety.GuardrailsConfig (default: every rail on)")
    serve.add_argument("--audit_log", default=None, help="append-only JSONL of every guardrail decision")

    tel = add("telemetry", help="usage, failures and latency hotspots of a `quark serve --log_dir` request log")
    tel.add_argument("--log", required=True, help="the server's --log_dir")
    tel.add_argument("--png", default=None, help="plot path (default LOG/telemetry.png)")

    rag = add("rag", help="answer a question from an index with a run, citing the sources (retrieve, rerank, generate)")
    rag.add_argument("--model_dir", required=True, help="run directory (an SFT'd model answers best)")
    rag.add_argument("--index", required=True, help="index directory (quark_jax.retrieval.index)")
    rag.add_argument("--question", required=True, help="the question to answer")
    rag.add_argument("--k", type=int, default=5, help="passages retrieved")
    rag.add_argument("--mode", default=None, help="lexical, dense or hybrid (default: the index's own)")
    rag.add_argument("--embedder_dir", default=None,
                     help="the run whose embedder built a dense index (default: none, lexical search only)")
    rag.add_argument("--rerank", action="store_true", help="rerank by the model's log p(question | passage)")
    rag.add_argument("--budget", type=int, default=None,
                     help="prompt tokens (default: the trained context minus --max_new_tokens)")
    rag.add_argument("--max_new_tokens", type=int, default=32)
    rag.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    rag.add_argument("--json", action="store_true", help="one JSON object: answer, citations, sources, prompt")
    rag.set_defaults(quantize=None)
    from quark_jax.retrieval import index_cli

    index_cli.add_subparser(sub, common, _Parser)
    emb = add("embed", help="embed a file of texts with a run (pooled hidden states) into a float32 .npy")
    emb.add_argument("--model_dir", required=True, help="run directory (a configs/runs/embed.gin run, or any run)")
    emb.add_argument("--input", required=True, help='.txt (one text per line) or .jsonl ({"text": ...} per line)')
    emb.add_argument("--output", required=True, help="the .npy to write ([N, dim] float32, L2-normalised rows)")
    emb.add_argument("--kind", choices=("query", "passage"), default="passage", help="which prefix the texts get")
    emb.add_argument("--batch_size", type=int, default=32, help="texts per compiled call")
    emb.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")

    tok = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer on a mixture")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True, parser_class=_Parser)
    tok_train = tok_sub.add_parser("train", parents=[common], help="train and write <output>.model / .vocab; prints fertility")
    tok_train.add_argument("--mixture", default="quark_demo")
    tok_train.add_argument("--output", required=True, help="path prefix, e.g. tokenizers/quark_demo_4k")
    tok_train.add_argument("--vocab_size", type=int, default=4096)
    tok_train.add_argument("--model_type", default="bpe", choices=("bpe", "unigram"))
    tok_train.add_argument("--max_chars", type=int, default=4_000_000, help="training sample size in characters")

    from quark_jax.safety import redteam_cli

    redteam = add("redteam", help="the red-team suite against a run or a server: attack success with guardrails off/on")
    redteam_cli.add_arguments(redteam)

    from quark_jax.knowledge import cli_main as kg_cli

    kg = sub.add_parser("kg", help="the standard library's knowledge graph: build it, query it")
    kg_cli.add_arguments(kg, _Parser, common)
    from quark_jax.agents import cli_main as agent_cli

    agent_cli.add_subparser(sub, common)
    from quark_jax.registry import cli_main as registry_cli

    registry_cli.add_subparsers(sub, common, _Parser)
    return parser


def _redteam(args: argparse.Namespace) -> int:
    from quark_jax.safety import redteam_cli

    if args.model_dir:
        _check_run_dir(args.model_dir)
    args.quantize = None
    try:
        return redteam_cli.run(args, _load_for_generation)
    except redteam_cli.RedteamUsageError as e:
        raise UsageError(str(e)) from None


def _registry(args: argparse.Namespace, bindings: list[str]) -> int:
    from quark_jax.registry import cli_main as registry_cli

    if args.command == "improve":  # trains: seqio's data backend must not take the GPUs
        _start_tensorflow(args.verbose)
    try:
        return registry_cli.run(args, bindings)
    except registry_cli.RegistryUsageError as e:
        raise UsageError(str(e)) from None


def _index(args: argparse.Namespace) -> int:
    from quark_jax.retrieval import index_cli

    try:
        return index_cli.run(args)
    except index_cli.IndexCommandError as e:
        raise UsageError(str(e)) from None


def _command_name(args: argparse.Namespace) -> str:
    sub = (getattr(args, "data_command", None) or getattr(args, "tokenizer_command", None)
           or getattr(args, "kg_command", None) or getattr(args, "index_command", None)
           or getattr(args, "runs_command", None))
    return f"quark {args.command}" + (f" {sub}" if sub else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quark`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        bindings, rest = _split_gin_flags(argv)
    except UsageError as e:
        print(f"quark: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    args = _build_parser().parse_args(rest)
    args.verbose += args.sub_verbose
    _configure_output(args.verbose)
    if bindings and args.command not in ("train", "data", "plan", "improve", "tune"):
        print(f"quark {args.command}: --gin.* flags only apply to `quark train`, `data`, `plan`, `tune` and "
              "`improve`",
              file=sys.stderr)
        return EXIT_CONFIG_ERROR
    commands = {"train": lambda: _train(args, bindings), "plan": lambda: _plan(args, bindings),
                "generate": lambda: _generate(args), "quantize": lambda: _quantize(args), "prune": lambda: _prune(args),
                "merge_lora": lambda: _merge_lora(args), "data": lambda: _data(args, bindings),
                "tokenizer": lambda: _tokenizer(args), "eval": lambda: _eval(args),
                "import_hf": lambda: _import_hf(args), "serve": lambda: _serve(args),
                "telemetry": lambda: _telemetry(args), "kg": lambda: _kg(args), "rag": lambda: _rag(args),
                "index": lambda: _index(args), "embed": lambda: _embed(args), "agent": lambda: _agent(args),
                "redteam": lambda: _redteam(args), "runs": lambda: _registry(args, bindings),
                "improve": lambda: _registry(args, bindings), "tune": lambda: _tune(args, bindings)}
    try:
        return commands[args.command]()
    except UsageError as e:
        print(f"{_command_name(args)}: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except _DoesNotFitExit as e:
        print(f"{_command_name(args)}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
