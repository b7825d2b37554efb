"""The `quark` command as a new user meets it: mistakes stop at once with one line naming the culprit (exit
status 2, no traceback, before any model is loaded), gin typos are caught, and the default output is quiet."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

import quark_jax
from conftest import REPO, RUN_CONFIG, run_quark, tiny_overrides, train_args
from quark_jax import gin_utils
from quark_jax.inference.generate import Generator, check_generation_args, check_prompts

# An argument error must stop before anything is compiled (a model load, a training set-up): checked by what the
# process did, not by wall time (a shared machine can make even an import-free error slow).
PROBE = """
import atexit, os, sys
import jax
compiled = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, _secs, **_: compiled.append(event) if event.endswith("backend_compile_duration") else None)
atexit.register(lambda: open(os.environ["QUARK_TEST_COMPILED"], "w").write(f"{len(compiled)} XLA compilations"
                                                                          if compiled else ""))
from quark_jax.cli import main
sys.exit(main())
"""


def quark_probed(*args: str) -> tuple:
    """Runs `quark ARGS` in a subprocess; returns the result and what it compiled before exiting (empty: nothing)."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as compiled_record:
        env = {**os.environ, "QUARK_TEST_COMPILED": compiled_record.name}
        result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=120)
        return result, compiled_record.read()


def assert_usage_error(result, compiled: str, prefix: str, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prefix}: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not compiled, f"{compiled}: the error should come before anything is compiled"
    return lines[0]


@pytest.fixture(scope="module")
def not_a_run(tmp_path_factory):
    """A directory that exists but was not written by `quark train`."""
    return str(tmp_path_factory.mktemp("not_a_run"))


@pytest.fixture(scope="module")
def jsonl_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("jsonl")
    (d / "malformed.jsonl").write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n{"prompt": "c",}\n')
    (d / "latin1.jsonl").write_bytes('{"prompt": "a"}\n{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    (d / "no_prompt.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    return d


GENERATE_ERRORS = {
    "max_new_tokens-0": (["--max_new_tokens", "0"], ["--max_new_tokens=0", ">= 1"]),
    "empty-prompt": (["--prompt", ""], ["--prompt", "empty"]),
    "negative-temperature": (["--temperature", "-1"], ["--temperature=-1", ">= 0"]),
    "top_p-2": (["--top_p", "2"], ["--top_p=2", "(0, 1]"]),
    "top_p-0": (["--top_p", "0"], ["--top_p=0", "(0, 1]"]),
    "negative-top_k": (["--top_k", "-1"], ["--top_k=-1", ">= 0"]),
    "beams-and-sampling": (["--num_beams", "2", "--temperature", "0.7"], ["--num_beams=2", "temperature"]),
    "malformed-jsonl": (["--input_jsonl", "{d}/malformed.jsonl"], ["malformed.jsonl line 4", "not valid JSON"]),
    "non-utf8-jsonl": (["--input_jsonl", "{d}/latin1.jsonl"], ["latin1.jsonl line 2", "UTF-8"]),
    "jsonl-without-prompt": (["--input_jsonl", "{d}/no_prompt.jsonl"], ["no_prompt.jsonl line 2", '"prompt"']),
    "missing-jsonl": (["--input_jsonl", "{d}/absent.jsonl"], ["absent.jsonl", "no such file"]),
}


@pytest.mark.parametrize("flags, fragments", GENERATE_ERRORS.values(), ids=GENERATE_ERRORS.keys())
def test_generate_argument_errors_are_one_line_before_loading(not_a_run, jsonl_files, flags, fragments):
    # --model_dir is not a run: arguments are checked first, so the message must name the argument instead.
    flags = [f.format(d=jsonl_files) for f in flags]
    result, compiled = quark_probed("generate", f"--model_dir={not_a_run}", *flags)
    assert_usage_error(result, compiled, "quark generate", *fragments)


def test_generate_model_dir_errors(tmp_path, not_a_run):
    result, compiled = quark_probed("generate", "--prompt", "x")
    assert_usage_error(result, compiled, "quark generate", "required", "--model_dir")
    result, compiled = quark_probed("generate", f"--model_dir={tmp_path / 'nowhere'}")
    assert_usage_error(result, compiled, "quark generate", "nowhere", "no such directory")
    result, compiled = quark_probed("generate", f"--model_dir={not_a_run}")
    assert_usage_error(result, compiled, "quark generate", not_a_run, "not a run directory")
    # A folder inside a run: the message points at the run directory itself.
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "model_config.json").write_text("{}")
    result, compiled = quark_probed("generate", f"--model_dir={run / 'tensorboard'}")
    assert_usage_error(result, compiled, "quark generate", "not a run directory", f"pass the run directory {run}")
    # A run that has not saved a checkpoint yet.
    result, compiled = quark_probed("generate", f"--model_dir={run}")
    assert_usage_error(result, compiled, "quark generate", "has no checkpoints/")


def test_eval_argument_errors(tmp_path, not_a_run):
    result, compiled = quark_probed("eval", f"--model_dir={not_a_run}", "--batches", "-1")
    assert_usage_error(result, compiled, "quark eval", "--batches=-1")
    result, compiled = quark_probed("eval", f"--model_dir={not_a_run}")
    assert_usage_error(result, compiled, "quark eval", "not a run directory")
    # A misspelt task is found before the model is read (the run directory only needs to look like one).
    (tmp_path / "model_config.json").write_text("{}")
    (tmp_path / "checkpoints").mkdir()
    result, compiled = quark_probed("eval", f"--model_dir={tmp_path}", "--mixture_or_task_name", "stdlb")
    assert_usage_error(result, compiled, "quark eval", "'stdlb'", "did you mean stdlib?")


def test_misspelt_macro_on_the_command_line(tmp_path):
    result, compiled = quark_probed("train", f"--gin_file={RUN_CONFIG}", f"--gin.MODEL_DIR='{tmp_path}'",
                                  "--gin.TRAIN_STEP=10")
    line = assert_usage_error(result, compiled, "quark train", "--gin.TRAIN_STEP", "did you mean TRAIN_STEPS?")
    assert "TRAIN_STEP " in line or "TRAIN_STEP (" in line


@pytest.mark.parametrize("value", ["/tmp/run", "run"])
def test_unquoted_string_binding_gets_the_quoting_hint(value):
    result, compiled = quark_probed("train", f"--gin_file={RUN_CONFIG}", f"--gin.MODEL_DIR={value}")
    assert_usage_error(result, compiled, "quark train", f"strings need inner quotes: --gin.MODEL_DIR=\"'{value}'\"")


def test_macro_checks_read_the_whole_parsed_config(tmp_path):
    """A macro counts as used wherever %NAME appears: an included file, another macro's value, a later
    binding; a macro that a file defines but nothing uses is as ignorable as a new one."""
    child = tmp_path / "child.gin"
    child.write_text(f"include '{RUN_CONFIG}'\nUNUSED_KNOB = 3\nOTHER = %SHARED\nquark_jax.TrainConfig.seed = %OTHER\n")
    required = ["MODEL_DIR='/tmp/unused'", "TRAIN_STEPS=2"]
    gin_utils.parse([str(child)], [*required, "BATCH_SIZE=4", "SHARED=7"])  # BATCH_SIZE: used by the include
    config = gin_utils.build_train_config()
    assert (config.data.batch_size, config.seed) == (4, 7)
    gin_utils.parse([str(child)], ["NEW=1", "SHARED=7", "quark_jax.TrainConfig.steps=%NEW"], defaults=required)
    assert gin_utils.build_train_config().steps == 1
    with pytest.raises(gin_utils.GinConfigError, match="UNUSED_KNOB.*the configuration's macros are"):
        gin_utils.parse([str(child)], [*required, "SHARED=1", "UNUSED_KNOB=4"])
    with pytest.raises(gin_utils.GinConfigError, match="did you mean BATCH_SIZE"):
        gin_utils.parse([str(child)], [*required, "SHARED=1", "BATCH_SIZ=4"])
    # Bindings a caller supplies for the user (quark plan's MODEL_DIR) are not held to that.
    gin_utils.parse([os.path.join(os.path.dirname(RUN_CONFIG), "..", "models", "tiny.gin")], [],
                    defaults=["MODEL_DIR='/tmp/unused'"])


def test_version():
    result, _ = quark_probed("--version")
    assert result.returncode == 0, result.stderr
    assert f"quark {quark_jax.__version__}" in result.stdout


def test_train_help_explains_gin_flags():
    result, _ = quark_probed("train", "--help")
    assert result.returncode == 0, result.stderr
    for fragment in ("--gin_file", "--gin.NAME=VALUE", "strings need inner quotes", "--gin.MODEL_DIR=\"'/tmp/run'\"",
                     "MODEL_DIR", "TRAIN_STEPS", "--verbose"):
        assert fragment in result.stdout, fragment


@pytest.mark.parametrize(
    "kwargs, name",
    [({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": [4, 0]}, "max_new_tokens"),
     ({"temperature": -0.5}, "temperature"), ({"temperature": float("nan")}, "temperature"),
     ({"top_k": -1}, "top_k"), ({"top_k": 2.5}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
     ({"num_beams": 0}, "num_beams"), ({"num_beams": 2, "temperature": 1.0}, "num_beams")],
)
def test_generator_checks_sampling_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}="):
        check_generation_args(**kwargs)
    # The Generator itself refuses them before tokenizing or compiling anything (it needs no model for that).
    generator = Generator(None, None, eos_id=1, compilation_cache=False)
    with pytest.raises(ValueError, match=f"^{name}="):
        generator.generate(["x"], **kwargs)
    check_generation_args(max_new_tokens=[1, 8], temperature=0.7, top_k=40, top_p=0.95)


def test_generator_checks_prompts():
    for prompts, match in (([], "at least one"), ([""], "empty"), (["a", None], "string")):
        with pytest.raises(ValueError, match=match):
            check_prompts(prompts)


NATIVE_START_UP_NOISE = ("cuInit", "absl::InitializeLog", "oneDNN", "cudart_stub", "cpu_feature_guard", "I0000")


def test_quiet_train(tmp_path):
    bindings = tiny_overrides(tmp_path / "run", 3, TASK_FEATURE_LENGTHS="{'targets': 64}",
                              **{"quark_jax.TrainConfig.eval_batches": 1})
    result = run_quark(*train_args(bindings))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "quark train: done" in result.stdout
    for noise in NATIVE_START_UP_NOISE:
        assert noise not in result.stderr, (noise, result.stderr)
    # The logical-axis-rules table is a DEBUG record; the validation result stays, on one line.
    assert "act_heads" not in result.stderr and "expert_batch" not in result.stderr, result.stderr
    assert "step 3: validation loss" in result.stderr


def test_quiet_and_verbose_generate(trained_run):
    args = ("generate", f"--model_dir={trained_run['model_dir']}", "--prompt", "def f", "--max_new_tokens", "4")
    quiet = run_quark(*args)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith("def f")
    assert quiet.stderr.strip() == "", quiet.stderr  # no TensorFlow start-up, no cuInit, no orbax metadata warning
    verbose = run_quark(*args, "-v")
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout == quiet.stdout
    assert " INFO " in verbose.stderr


def test_requests_beyond_the_trained_context_are_refused(trained_run):
    """The tiny run trained on 128-token sequences (run.json): a longer request is an error naming the lengths,
    before anything is compiled for it; beyond_context='warn' lets it through."""
    long_prompt = "x = 1\n" * 60  # ~180 tokens
    model = quark_jax.load(trained_run["model_dir"])
    assert model.trained_context == 128
    with pytest.raises(ValueError, match=r"is \d+ tokens, beyond the 128-token context"):
        model.generate([long_prompt], max_new_tokens=4)
    compiled = model.generator.num_compiled()
    with pytest.raises(ValueError, match="beyond the 128-token context"):
        model.score([long_prompt], ["y"])
    assert model.generator.num_compiled() == compiled  # refused before compiling a bigger bucket
    assert len(model.generate(["def f"], max_new_tokens=100)) == 1  # 4 + 100 tokens fit
    result, compiled = quark_probed("generate", f"--model_dir={trained_run['model_dir']}", "--prompt", long_prompt,
                                  "--max_new_tokens", "4")
    assert result.returncode == 2 and "beyond the 128-token context" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    warned = run_quark("generate", f"--model_dir={trained_run['model_dir']}", "--prompt", long_prompt,
                       "--max_new_tokens", "4", "--beyond_context", "warn")
    assert warned.returncode == 0 and warned.stdout.startswith(long_prompt), warned.stderr
    assert "beyond the 128-token context" in warned.stderr


def _main_error(capsys, *argv: str) -> str:
    """Runs ``quark ARGV`` in this process; asserts exit status 2 and one line on stderr, and returns it."""
    from quark_jax import cli

    assert cli.main(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_serve_telemetry_and_feedback_errors_are_one_line(capsys, tmp_path, not_a_run, trained_run):
    line = _main_error(capsys, "serve", "--model_dir", not_a_run)
    assert line.startswith("quark serve: ") and not_a_run in line
    assert "--max_slots=0: must be >= 1" in _main_error(capsys, "serve", "--model_dir", not_a_run, "--max_slots", "0")
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        line = _main_error(capsys, "serve", "--model_dir", trained_run["model_dir"], "--port", port)
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in line and "pick another port" in line
    line = _main_error(capsys, "telemetry", "--log", str(tmp_path))
    assert line.startswith("quark telemetry: ") and str(tmp_path) in line and "quark serve --log_dir" in line
    missing = str(tmp_path / "feedback.jsonl")
    line = _main_error(capsys, "data", "feedback", "--feedback", missing, "--output", str(tmp_path / "pairs"))
    assert line.startswith("quark data feedback: ") and missing in line
