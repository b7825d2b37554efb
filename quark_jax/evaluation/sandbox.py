"""Run untrusted, model-generated Python in a constrained subprocess and classify the outcome.

Each run gets a fresh interpreter (``python -I -S -B``: isolated mode, no site-packages, no bytecode writes; the
generated code needs only the standard library) in a new session, with a new temporary directory as its working
directory, ``HOME`` and ``TMPDIR`` and a minimal environment (no proxies, no credentials). The directory is deleted
afterwards, and the whole process group is killed.

Before the program runs, a small prelude in the child:

* sets resource limits (hard = soft, so the program cannot raise them back): address space (``memory_mb``), CPU
  seconds (a backstop to the wall-clock timeout), file size (``max_file_bytes``, which also caps stdout/stderr),
  no core dumps, at most 256 open files, and ``RLIMIT_NPROC = 0`` (no new processes or threads; the kernel ignores
  this limit for root, hence the next point). The limits are set in the child itself rather than with a
  ``preexec_fn``, which can deadlock when the parent has threads (a JAX process always has);
* installs a ``sys.addaudithook`` hook that stops the program at the first attempt to use the network
  (``socket.connect``/``bind``/``sendto``/``sendmsg``/``getaddrinfo``/``gethostby*``), start a process
  (``os.fork``/``forkpty``/``system``/``exec*``/``posix_spawn``/``spawn*``, ``subprocess.Popen``; the raw
  ``_posixsubprocess.fork_exec`` is replaced), signal another process, write, create, remove, rename, link,
  chmod or truncate any path outside its directory (``open`` for writing, ``os.*``, ``shutil.*``; paths are
  resolved through symlinks and ``dir_fd``), load native code (``ctypes``), raise resource limits, walk the garbage
  collector's object graph, or import ``ctypes``, ``_posixsubprocess``, subinterpreter or ``_test*`` modules. A
  blocked attempt ends the program at once (exit code :data:`FORBIDDEN_EXIT`, so it cannot be caught and ignored)
  and counts as ``"forbidden"``;
* runs the program as ``__main__``; a ``MemoryError`` it does not handle ends it as ``"memory"``.

Statuses: ``"passed"`` (exit 0; with ``require_completion`` also the end of the program was reached, so an early
``sys.exit(0)``/``os._exit(0)`` does not skip the tests), ``"failed"`` (non-zero exit: an exception, a failed
assertion, a syntax error, a crash by a signal), ``"timeout"`` (wall clock or CPU limit), ``"memory"``,
``"forbidden"``, ``"error"`` (the sandbox itself could not run the program).

What this does NOT protect against (it is not a VM or a container): audit hooks are a CPython-level mechanism, and
code determined to escape can find ways around them (interpreter bugs, objects reached by introspection such as
frames or ``sys.modules``, C extensions already loaded); reading files is allowed anywhere the user can read;
resource use the limits above do not cover (many files in the temp dir, each up to the file-size limit; several
threads on several cores, when running as root); and, when run as root, the kernel does not enforce the process
limit and file permissions do not confine writes, so only the hook stands in the way. For hostile code, run the evaluation in a disposable container or VM without network and as an
unprivileged user; this sandbox is for honest mistakes of a model (loops, forks, huge allocations, stray writes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

FORBIDDEN_EXIT = 117  # the prelude stopped a forbidden operation
MEMORY_EXIT = 118  # the program ran out of its address space (MemoryError)
SANDBOX_ERROR_EXIT = 119  # the prelude itself failed
_MARK = "[quark-sandbox]"
OUTPUT_LIMIT = 4096  # characters of stdout / stderr kept in the result

# Runs in the child as `python -I -S -B -c _PRELUDE`; reads its settings and the program from stdin (JSON).
_PRELUDE = r'''
def _quark_sandbox():
    import json, os, resource, signal, sys, types
    FORBIDDEN, MEMORY, ERROR = %(forbidden)d, %(memory)d, %(error)d
    MARK = %(mark)r
    try:
        cfg = json.loads(sys.stdin.buffer.read().decode("utf-8"))
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        root = os.path.realpath(cfg["root"])
        sys.dont_write_bytecode = True
        for name, soft, hard in [("RLIMIT_AS", cfg["memory"], cfg["memory"]),
                                 ("RLIMIT_CPU", cfg["cpu"], cfg["cpu"] + 1),
                                 ("RLIMIT_FSIZE", cfg["fsize"], cfg["fsize"]),
                                 ("RLIMIT_CORE", 0, 0), ("RLIMIT_NOFILE", 256, 256), ("RLIMIT_NPROC", 0, 0)]:
            if hasattr(resource, name):
                try:
                    resource.setrlimit(getattr(resource, name), (soft, hard))
                except (ValueError, OSError):
                    if name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE"):
                        raise
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError instead of killing
        import _posixsubprocess
    except BaseException as exc:
        os.write(2, ("\n%%s sandbox setup failed: %%r\n" %% (MARK, exc)).encode())
        os._exit(ERROR)

    write = os.write
    exit_now = os._exit
    realpath, join, isabs, fsdecode = os.path.realpath, os.path.join, os.path.isabs, os.fsdecode
    readlink, getpid = os.readlink, os.getpid
    devnull_path = os.devnull
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def deny(what):
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        try:
            write(2, ("\n%%s forbidden: %%s\n" %% (MARK, what)).encode("utf-8", "replace"))
        finally:
            exit_now(FORBIDDEN)

    def fork_exec(*args, **kwargs):
        deny("_posixsubprocess.fork_exec")

    _posixsubprocess.fork_exec = fork_exec

    def inside(path, dir_fd=None):
        if isinstance(path, int):
            return True  # an already open descriptor: it was checked when it was opened
        try:
            path = fsdecode(path)
            if dir_fd is not None and dir_fd >= 0 and not isabs(path):  # -1: no dir_fd
                path = join(readlink("/proc/self/fd/%%d" %% dir_fd), path)
            real = realpath(path)
        except BaseException:
            return False
        return real == root or real.startswith(root + "/") or real == devnull_path

    blocked = {
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
        "pty.spawn", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
        "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr", "socket.getnameinfo",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata", "ctypes.call_function",
        "resource.setrlimit", "resource.prlimit", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "os.chroot", "os.setuid", "os.setgid",
    }
    blocked_imports = {"ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters", "_xxinterpchannels",
                       "_interpreters", "_interpchannels", "_interpqueues", "_testcapi", "_testinternalcapi",
                       "_testmultiphase", "_testimportmultiple", "_testsinglephase", "_xxtestfuzz"}
    # event -> (path argument index, dir_fd argument index or None) for each path the event changes
    path_events = {
        "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
        "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),),
        "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.truncate": ((0, None),), "os.utime": ((0, 3),),
        "os.setxattr": ((0, None),), "os.removexattr": ((0, None),), "os.chflags": ((0, None),),
        "os.lchflags": ((0, None),), "os.lchmod": ((0, None),), "os.mkfifo": ((0, None),), "os.mknod": ((0, None),),
        "shutil.rmtree": ((0, None),), "shutil.move": ((0, None), (1, None)), "shutil.copyfile": ((1, None),),
        "shutil.copymode": ((1, None),), "shutil.copystat": ((1, None),), "shutil.copytree": ((1, None),),
        "shutil.chown": ((0, None),), "shutil.make_archive": ((0, None),), "shutil.unpack_archive": ((1, None),),
    }

    def hook(event, args):
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = bool((flags or 0) & write_flags) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writing and not inside(path):
                deny("open for writing %%r" %% (path,))
        elif event in blocked:
            deny(event)
        elif event == "import":
            if args and str(args[0]).split(".")[0] in blocked_imports:
                deny("import %%s" %% (args[0],))
        elif event in ("os.kill", "os.killpg"):
            if args[0] != getpid():
                deny(event)
        elif event in path_events:
            for index, fd_index in path_events[event]:
                if index < len(args):
                    dir_fd = args[fd_index] if fd_index is not None and fd_index < len(args) else None
                    if not inside(args[index], dir_fd):
                        deny("%%s %%r" %% (event, args[index]))

    sys.addaudithook(hook)

    import linecache
    code = cfg["code"]
    linecache.cache["<program>"] = (len(code), None, code.splitlines(True), "<program>")
    program = types.ModuleType("__main__")
    program.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = program
    done = ("\n%%s done %%s\n" %% (MARK, cfg["nonce"])).encode()
    del cfg
    try:
        exec(compile(code, "<program>", "exec"), program.__dict__)
    except MemoryError:
        program.__dict__.clear()
        write(2, ("\n%%s memory: MemoryError\n" %% MARK).encode())
        exit_now(MEMORY)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        write(2, done)

_quark_sandbox()
''' % {"forbidden": FORBIDDEN_EXIT, "memory": MEMORY_EXIT, "error": SANDBOX_ERROR_EXIT, "mark": _MARK}


@dataclasses.dataclass
class SandboxResult:
    """How a sandboxed program ended.

    ``status`` is one of ``"passed"``, ``"failed"``, ``"timeout"``, ``"memory"``, ``"forbidden"``, ``"error"``;
    ``reason`` says what was blocked or why it failed, when known; ``stdout``/``stderr`` are truncated to
    :data:`OUTPUT_LIMIT` characters (head and tail kept); ``seconds`` is wall-clock time.
    """

    passed: bool
    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    reason: str = ""


def _read_output(handle, limit: int = OUTPUT_LIMIT) -> str:
    """The captured output, decoded, keeping the first quarter and last three quarters of ``limit`` characters."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    if size <= 4 * limit:
        text = handle.read().decode("utf-8", "replace")
    else:
        head = handle.read(limit).decode("utf-8", "replace")
        handle.seek(size - 4 * limit)
        text = head + "\n" + handle.read().decode("utf-8", "replace")
    if len(text) > limit:
        keep_head = limit // 4
        omitted = len(text) - limit
        text = text[:keep_head] + f"\n...[{omitted} characters omitted]...\n" + text[-(limit - keep_head):]
    return text


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 512, max_file_bytes: int = 1_000_000,
               require_completion: bool = False) -> SandboxResult:
    """Run ``code`` (standard-library Python) in the sandbox described in the module docstring.

    ``timeout_s`` is wall-clock (the CPU limit is ``ceil(timeout_s) + 1`` seconds as a backstop), ``memory_mb``
    the address-space limit, ``max_file_bytes`` the largest file the program may write (stdout and stderr
    included). With ``require_completion`` the program only passes if it runs to its last line (no early exit).
    Never raises for anything the program does; the run goes on.
    """
    start = time.perf_counter()
    root = tempfile.mkdtemp(prefix="quark_sandbox_")
    nonce = secrets.token_hex(16)
    payload = json.dumps({"code": code, "nonce": nonce, "root": root, "memory": int(memory_mb) << 20,
                          "cpu": int(math.ceil(timeout_s)) + 1, "fsize": int(max_file_bytes)}).encode("utf-8")
    env = {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    timed_out = False
    returncode: int | None = None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", _PRELUDE], stdin=subprocess.PIPE,
                                        stdout=out, stderr=err, cwd=root, env=env, start_new_session=True,
                                        close_fds=True)
            except OSError as exc:
                return SandboxResult(False, "error", None, "", "", time.perf_counter() - start,
                                     f"could not start the interpreter: {exc}")
            try:
                proc.communicate(payload, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                proc.wait()
            finally:
                _kill_group(proc.pid)  # anything it left behind in its session
            returncode = proc.returncode
        finally:
            shutil.rmtree(root, ignore_errors=True)
        seconds = time.perf_counter() - start
        stdout = _read_output(out)
        err.seek(0, os.SEEK_END)
        err.seek(max(0, err.tell() - 4096))
        err_tail = err.read().decode("utf-8", "replace")
        stderr = _read_output(err)
    done_line = f"{_MARK} done {nonce}"
    completed = done_line in err_tail
    stderr = stderr.replace("\n" + done_line + "\n", "").replace(done_line, "")
    status, reason = _classify(returncode, timed_out, completed, require_completion, err_tail, seconds, timeout_s)
    return SandboxResult(status == "passed", status, returncode, stdout, stderr, seconds, reason)


def _marked(err_tail: str, kind: str) -> str:
    prefix = f"{_MARK} {kind}: "
    lines = [line for line in err_tail.splitlines() if line.startswith(prefix)]
    return lines[-1][len(prefix):] if lines else ""


def _classify(returncode: int | None, timed_out: bool, completed: bool, require_completion: bool, err_tail: str,
              seconds: float, timeout_s: float) -> tuple[str, str]:
    if timed_out:
        return "timeout", f"killed after {timeout_s:g} s (wall clock)"
    if returncode == FORBIDDEN_EXIT:
        return "forbidden", _marked(err_tail, "forbidden") or "blocked operation"
    if returncode == MEMORY_EXIT or (returncode not in (0, None) and "MemoryError" in err_tail):
        return "memory", "MemoryError"
    if returncode == SANDBOX_ERROR_EXIT and f"{_MARK} sandbox setup failed" in err_tail:
        return "error", err_tail.strip().splitlines()[-1]
    if returncode == -signal.SIGXCPU:
        return "timeout", "CPU time limit"
    if returncode == -signal.SIGKILL:
        # The CPU hard limit kills with SIGKILL; killed well before it, the kernel most likely ran out of memory.
        if seconds >= math.ceil(timeout_s):
            return "timeout", "CPU time limit (SIGKILL)"
        return "memory", "killed by SIGKILL (out of memory?)"
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return "failed", f"killed by {name}"
    if returncode == 0:
        if require_completion and not completed:
            return "failed", "the program exited before reaching its end (its tests did not all run)"
        return "passed", ""
    last = err_tail.strip().splitlines()[-1] if err_tail.strip() else ""
    return "failed", last or f"exit code {returncode}"


def run_tests(completion_program: str, tests: str, timeout_s: float = 5.0, memory_mb: int = 512,
              max_file_bytes: int = 1_000_000) -> SandboxResult:
    """Run ``completion_program + "\\n" + tests`` in the sandbox; passes only if the tests run to the end."""
    return run_python(completion_program + "\n" + tests, timeout_s=timeout_s, memory_mb=memory_mb,
                      max_file_bytes=max_file_bytes, require_completion=True)
