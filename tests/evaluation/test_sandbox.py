"""The code sandbox: each escape a model's code might attempt is stopped and classified, and the run goes on."""

import os

import pytest

from quark_jax.evaluation.sandbox import run_python, run_tests


def _check(code, status, **kwargs):
    result = run_python(code, **kwargs)
    assert result.status == status, (result.status, result.reason, result.stderr)
    assert result.passed == (status == "passed")
    # the run goes on: the next program runs normally
    after = run_python("print(6 * 7)")
    assert after.status == "passed" and after.stdout == "42\n", after
    return result


def test_passing_program_and_output():
    result = _check("import math\nprint(math.factorial(5))\nassert sum(range(4)) == 6", "passed")
    assert result.stdout == "120\n" and result.returncode == 0 and result.seconds < 3


def test_failing_assertion_and_syntax_error():
    result = _check("def f(x):\n    return x + 1\nassert f(1) == 3, 'wrong'", "failed")
    assert "AssertionError: wrong" in result.reason and "AssertionError" in result.stderr
    assert _check("def f(:\n", "failed").reason.startswith("SyntaxError")


def test_infinite_loop_times_out():
    result = _check("while True:\n    pass", "timeout", timeout_s=1)
    assert result.seconds < 2.5


@pytest.mark.parametrize("code", [
    "import os\nos.fork()",
    "import os\nwhile True:\n    os.fork()",  # a fork bomb
    "import subprocess\nsubprocess.run(['ls'])",
    "import os\nos.system('ls')",
    "import _posixsubprocess\n_posixsubprocess.fork_exec()",
    "import os\ntry:\n    os.fork()\nexcept Exception:\n    pass\nprint('caught it')",  # cannot be caught and ignored
])
def test_processes_are_forbidden(code):
    result = _check(code, "forbidden")
    assert "caught it" not in result.stdout


@pytest.mark.parametrize("code", ["x = bytearray(10**10)",
                                  "x = []\nwhile True:\n    x.append(bytes(64 * 2**20))"])
def test_unbounded_allocation_is_memory(code):
    _check(code, "memory", memory_mb=256)


@pytest.mark.parametrize("target", ["/tmp/escape.txt", "../escape.txt"])
def test_writes_outside_the_temp_dir_are_forbidden(target, tmp_path):
    outside = "/tmp/escape.txt"
    if os.path.exists(outside):
        os.remove(outside)
    result = _check(f"open({target!r}, 'w').write('escaped')", "forbidden")
    assert "open for writing" in result.reason
    assert not os.path.exists(outside) and not os.path.exists("/tmp/../escape.txt")
    # through a symlink, another directory's descriptor, or a hard link to a file outside: also stopped
    _check("import os\nos.symlink('/tmp/escape.txt', 'link')\nopen('link', 'w').write('x')", "forbidden")
    _check("import os\nfd = os.open('/tmp', os.O_RDONLY)\nos.mkdir('escape_dir', dir_fd=fd)", "forbidden")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    _check(f"import os\nos.remove({str(victim)!r})", "forbidden")
    assert victim.read_text() == "keep" and not os.path.exists(outside)
    assert not os.path.exists("/tmp/escape_dir")


def test_network_is_forbidden():
    result = _check("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))", "forbidden")
    assert "socket.connect" in result.reason
    _check("import socket\nsocket.getaddrinfo('example.com', 80)", "forbidden")
    _check("import ctypes", "forbidden")


def test_writing_inside_its_temp_dir_is_allowed_and_cleaned():
    code = ("import os, tempfile\nopen('a.txt', 'w').write('ok')\nos.mkdir('d')\nopen('d/b', 'w').write('1')\n"
            "fd, path = tempfile.mkstemp()\nos.close(fd)\nprint(os.getcwd())\nprint(open('a.txt').read())")
    result = _check(code, "passed")
    workdir, content = result.stdout.split()
    assert content == "ok" and os.path.basename(workdir).startswith("quark_sandbox_")
    assert not os.path.exists(workdir)


def test_run_tests_needs_the_tests_to_finish():
    program = "def add(a, b):\n    return a + b"
    assert run_tests(program, "assert add(2, 3) == 5").status == "passed"
    assert run_tests(program, "assert add(2, 3) == 6").status == "failed"
    # a completion that exits early does not skip its tests
    for early in ["import sys\nsys.exit(0)", "import os\nos._exit(0)"]:
        result = run_tests(program + "\n" + early, "assert add(2, 3) == 6")
        assert result.status == "failed" and "before reaching its end" in result.reason


def test_output_is_truncated_and_file_size_limited():
    result = run_python("while True:\n    print('x' * 1000)", max_file_bytes=100_000)
    assert result.status == "failed" and len(result.stdout) < 5000
