"""Evaluation tasks: one YAML file per task naming local JSONL data, a prompt template and metrics.

A task file (``evals/tasks/*.yaml`` ships with the package; a user's own file is passed by path)::

    task: stdlib_qa                 # name (unique)
    description: one line
    data: data/stdlib_qa.jsonl      # JSONL, relative to the YAML file's directory (or absolute)
    output_type: generate_until     # multiple_choice | loglikelihood_rolling | generate_until | retrieval
    prompt: "Q: {question}\\nA:"     # str.format template over the example's fields ({{ and }} escape braces)
    target: answer                  # field: reference text, or the right choice (an int index or the text)
    choices: choices                # multiple_choice: field holding the list of choice strings
    target_delimiter: " "           # multiple_choice: between the prompt and each choice
    text: text                      # loglikelihood_rolling: field with the text to score
    domain: code                    # optional label
    until: ["\\n"]                   # generate_until: stop strings
    max_tokens: 64                  # generate_until
    samples: 1                      # generate_until: completions per example
    temperature: 0.0                # generate_until (0 = greedy; samples > 1 needs > 0)
    tests: tests                    # code tasks: field with Python test code run in the sandbox
    passages: data/passages.jsonl   # retrieval: the pool searched, {"id", "text"} per line
    metrics: [exact_match, rouge]   # names in metrics.METRICS allowed for the output type

Every error is a ``ValueError`` with one line naming the file (and the line, for JSONL). An example that lacks
a field the task names is an error, not a skip: a silently shorter evaluation would change what the figures
mean.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import string
from typing import Any

from quark_jax.data.jsonl import iter_jsonl

OUTPUT_TYPES = ("multiple_choice", "loglikelihood_rolling", "generate_until", "retrieval")
TASKS_DIR = "evals/tasks"  # the shipped suites (quark_jax.resources.shipped)

# What each output type needs, and its metrics when the file names none.
_REQUIRED = {
    "multiple_choice": ("prompt", "target", "choices"),
    "loglikelihood_rolling": ("text",),
    "generate_until": ("prompt",),
    "retrieval": ("prompt", "target", "passages"),  # query template, field of relevant ids, the pool
}
DEFAULT_METRICS = {
    "multiple_choice": ("acc", "acc_norm"),
    "loglikelihood_rolling": ("perplexity", "bits_per_byte"),
    "generate_until": ("exact_match",),
    "retrieval": ("recall@1", "recall@10", "mrr", "ndcg@10"),
}


@dataclasses.dataclass(frozen=True)
class EvalTask:
    """One task, as read from its YAML file (``path``); ``data`` is resolved to an absolute path."""

    task: str
    data: str
    output_type: str
    path: str = ""
    description: str = ""
    prompt: str = ""
    target: str | None = None
    choices: str | None = None
    target_delimiter: str = " "
    text: str | None = None
    domain: str | None = None
    until: tuple[str, ...] = ()
    max_tokens: int = 64
    samples: int = 1
    temperature: float = 0.0
    tests: str | None = None
    metrics: tuple[str, ...] = ()
    passages: str | None = None  # retrieval: absolute path of the passages JSONL

    @property
    def name(self) -> str:
        return self.task

    def template_fields(self) -> tuple[str, ...]:
        """The example fields the prompt template names (``{question}``, ``{a.b}`` → ``a``)."""
        return _template_fields(self.prompt, self.path)

    def needed_fields(self) -> tuple[str, ...]:
        """Every example field this task reads, in a stable order."""
        fields = list(self.template_fields()) if self.output_type != "loglikelihood_rolling" else []
        for name in (self.target, self.choices, self.text, self.tests):
            if name and name not in fields:
                fields.append(name)
        return tuple(fields)


_KEYS = {f.name for f in dataclasses.fields(EvalTask)} - {"path"}


def _template_fields(template: str, where: str) -> tuple[str, ...]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"{where}: prompt template {template!r} is malformed ({e}; write {{{{ and }}}} for "
                         "literal braces)") from None
    fields: list[str] = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        base = field.split(".", 1)[0].split("[", 1)[0]
        if not base or base.isdigit():
            raise ValueError(f"{where}: prompt template {template!r} has a positional field {{{field}}}; "
                             "name an example field, e.g. {question}")
        if base not in fields:
            fields.append(base)
    return tuple(fields)


def _fail(path: str, what: str) -> ValueError:
    return ValueError(f"{path}: {what}")


def load_task(path: str | os.PathLike) -> EvalTask:
    """Reads and validates one task YAML file (see the module docstring for the format)."""
    import yaml

    path = str(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: task file not found")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{where}: not valid YAML ({problem})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not isinstance(raw, dict):
        raise _fail(path, f"a task file must be a YAML mapping (key: value lines), not {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise _fail(path, f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    for key in ("task", "data", "output_type"):
        if raw.get(key) in (None, ""):
            raise _fail(path, f"missing required key {key!r}")
    output_type = raw["output_type"]
    if output_type not in OUTPUT_TYPES:
        raise _fail(path, f"output_type {output_type!r} must be one of {', '.join(OUTPUT_TYPES)}")
    for key in _REQUIRED[output_type]:
        if raw.get(key) in (None, ""):
            raise _fail(path, f"missing required key {key!r} (output_type {output_type} needs it)")
    if output_type == "generate_until" and not raw.get("target") and not raw.get("tests"):
        raise _fail(path, "generate_until needs 'target' (reference text) or 'tests' (a code task)")
    for key in ("task", "data", "description", "prompt", "target", "choices", "target_delimiter", "text", "domain",
                "tests", "passages"):
        if key in raw and raw[key] is not None and not isinstance(raw[key], str):
            if key == "target" and isinstance(raw[key], int):
                continue
            raise _fail(path, f"{key}: must be a string, not {raw[key]!r}")

    until = raw.get("until", ())
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, (list, tuple)) or not all(isinstance(s, str) and s for s in until):
        raise _fail(path, f"until: must be a list of non-empty strings, not {until!r}")
    metrics = raw.get("metrics") or list(DEFAULT_METRICS[output_type])
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple)) or not all(isinstance(m, str) for m in metrics):
        raise _fail(path, f"metrics: must be a list of metric names, not {metrics!r}")
    numbers = {}
    for key, kind, low in (("max_tokens", int, 1), ("samples", int, 1), ("temperature", (int, float), 0)):
        value = raw.get(key, {"max_tokens": 64, "samples": 1, "temperature": 0.0}[key])
        if isinstance(value, bool) or not isinstance(value, kind) or value < low:
            raise _fail(path, f"{key}: must be a number >= {low}, not {value!r}")
        numbers[key] = value
    if numbers["samples"] > 1 and numbers["temperature"] <= 0:
        raise _fail(path, f"samples: {numbers['samples']} with temperature 0 would repeat the same greedy "
                          "completion; set temperature > 0")

    from quark_jax.evaluation import metrics as metric_registry

    for name in metrics:
        try:
            metric_registry.check_metric(name, output_type)
        except (ValueError, KeyError) as e:
            message = str(e.args[0]) if e.args else str(e)
            raise _fail(path, message if repr(name) in message else f"metric {name!r}: {message}") from None
    if any(m.startswith("pass@") for m in metrics) and not raw.get("tests"):
        raise _fail(path, "pass@k metrics need 'tests' (the field with each example's test code)")
    needs_reference = [m for m in metrics if m in ("exact_match", "rouge", "bleu", "chrf")]
    if output_type == "generate_until" and needs_reference and not raw.get("target"):
        raise _fail(path, f"metric {needs_reference[0]!r} compares with a reference: set 'target' (the field "
                          "holding the reference text)")

    data = str(raw["data"])
    data_path = data if os.path.isabs(data) else os.path.join(os.path.dirname(os.path.abspath(path)), data)
    if not os.path.isfile(data_path):
        raise _fail(path, f"data file {data!r} not found (looked for {data_path})")
    passages = None
    if output_type == "retrieval":
        given = str(raw["passages"])
        passages = given if os.path.isabs(given) else os.path.join(os.path.dirname(os.path.abspath(path)), given)
        if not os.path.isfile(passages):
            raise _fail(path, f"passages file {given!r} not found (looked for {passages})")
        passages = os.path.normpath(passages)
    target = raw.get("target")
    task = EvalTask(
        task=str(raw["task"]), data=os.path.normpath(data_path), output_type=output_type,
        path=os.path.abspath(path), description=str(raw.get("description") or ""), prompt=str(raw.get("prompt") or ""),
        target=None if target is None else str(target), choices=raw.get("choices"),
        target_delimiter=str(raw.get("target_delimiter", " ")), text=raw.get("text"), domain=raw.get("domain"),
        until=tuple(until), max_tokens=int(numbers["max_tokens"]), samples=int(numbers["samples"]),
        temperature=float(numbers["temperature"]), tests=raw.get("tests"), metrics=tuple(metrics), passages=passages,
    )
    task.template_fields()  # a malformed template fails now, naming the file
    return task


def load_examples(task: EvalTask, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` (all if None) examples of the task's JSONL file; blank lines are skipped.

    Each example is a dict with the file's fields plus ``_line`` (its 1-based line number). Raises
    ``ValueError("FILE:LINE: ...")`` for a line that is not a JSON object or lacks a field the task names."""
    path = task.data
    examples: list[dict[str, Any]] = []
    needed = task.needed_fields()
    try:
        open(path, "rb").close()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the data file ({e.strerror})") from None
    for number, example in iter_jsonl(path):
        if limit is not None and len(examples) >= limit:
            break
        if not isinstance(example, dict):
            raise ValueError(f"{path}:{number}: not a JSON object (got {type(example).__name__})")
        for field in needed:
            if field not in example:
                raise ValueError(f"{path}:{number}: missing field {field!r} (task {task.task} in "
                                 f"{os.path.basename(task.path) or 'its file'} names it)")
        _check_example(task, example, f"{path}:{number}")
        example["_line"] = number
        examples.append(example)
    if not examples:
        raise ValueError(f"{path}: no examples (an empty data file)")
    return examples


def _check_example(task: EvalTask, example: dict[str, Any], where: str) -> None:
    if task.output_type == "multiple_choice":
        choices = example[task.choices]
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{where}: field {task.choices!r} must be a non-empty list of strings")
        gold_index(task, example, where)
    elif task.output_type == "loglikelihood_rolling":
        if not isinstance(example[task.text], str) or not example[task.text]:
            raise ValueError(f"{where}: field {task.text!r} must be a non-empty string")
    if task.output_type != "loglikelihood_rolling":
        try:
            render_prompt(task, example)
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: the prompt template does not fit this example ({type(e).__name__}: {e})") \
                from None
    if task.tests and not isinstance(example[task.tests], str):
        raise ValueError(f"{where}: field {task.tests!r} must be a string of Python test code")


def gold_index(task: EvalTask, example: dict[str, Any], where: str = "") -> int:
    """The index of the right choice: the target field is an int index or the choice's text."""
    choices, gold = example[task.choices], example[task.target]
    if isinstance(gold, bool) or not isinstance(gold, (int, str)):
        raise ValueError(f"{where}: field {task.target!r} must be a choice index or a choice's text, not {gold!r}")
    if isinstance(gold, int):
        if not 0 <= gold < len(choices):
            raise ValueError(f"{where}: field {task.target!r} = {gold} is not an index of the {len(choices)} choices")
        return gold
    if gold not in choices:
        raise ValueError(f"{where}: field {task.target!r} = {gold!r} is not one of the choices")
    return choices.index(gold)


def render_prompt(task: EvalTask, example: dict[str, Any]) -> str:
    """The task's prompt template filled with the example's fields."""
    return task.prompt.format(**example)


def _shipped_tasks_dir() -> pathlib.Path:
    from quark_jax import resources

    return resources.shipped(TASKS_DIR)


def shipped_task_files() -> list[pathlib.Path]:
    """The YAML files of the built-in suites (``evals/tasks`` of a checkout, or the wheel's copy)."""
    directory = _shipped_tasks_dir()
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def find_tasks(spec: str) -> list[EvalTask]:
    """Tasks named by ``spec``: ``"all"`` (every built-in task), or a comma-separated list of built-in task
    names and YAML file paths. An unknown name is a ``ValueError`` listing the known ones."""
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not items:
        raise ValueError("no task given: name built-in tasks, 'all', or task YAML files")
    shipped: dict[str, EvalTask] | None = None

    def builtin() -> dict[str, EvalTask]:
        nonlocal shipped
        if shipped is None:
            shipped = {}
            for path in shipped_task_files():
                task = load_task(path)
                if task.task in shipped:
                    raise ValueError(f"{path}: task name {task.task!r} is also used by {shipped[task.task].path}")
                shipped[task.task] = task
        return shipped

    tasks: list[EvalTask] = []
    for item in items:
        if item == "all":
            found = list(builtin().values())
            if not found:
                raise ValueError(f"no built-in tasks found in {_shipped_tasks_dir()}")
        elif item.endswith((".yaml", ".yml")) or os.sep in item or os.path.isfile(item):
            found = [load_task(item)]
        elif item in builtin():
            found = [builtin()[item]]
        else:
            known = ", ".join(sorted(builtin())) or "none"
            raise ValueError(f"unknown task {item!r}: built-in tasks are {known} (or pass a task YAML file)")
        for task in found:
            if any(t.task == task.task for t in tasks):
                if any(t.task == task.task and t.path == task.path for t in tasks):
                    continue
                raise ValueError(f"{task.path}: task name {task.task!r} is given twice")
            tasks.append(task)
    return tasks
