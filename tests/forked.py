"""`python -m labs ARGS` run in a process forked from one that has already imported the libraries the labs use.

Each lab process spends ~6 s of a CPU importing torch, transformers, trl, peft and datasets before its first step,
and the suite starts over a hundred of them. multiprocessing's forkserver imports those libraries once (this
module, preloaded; it imports every lab, then forgets the `labs` package) and forks every lab from there. The forked
process then does what the interpreter does for `python -m labs ARGS`: it takes the command's working directory,
environment, argv and output files, imports `labs` from that directory (the workspace's own copy) and runs its
`__main__`; its exit status is the command's.

Only a command whose environment is the one the libraries were imported in can be forked (`matches`): the kernel
pins, for one, are read when torch first computes, and HF_DATASETS_CACHE when datasets is imported. Every forked lab
also shares the server's str hash seed, so a command whose result is compared with another run of it should be a
subprocess on at least one side; conftest.py forks only the commands expected to succeed.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing
import os
import runpy
import subprocess
import sys
import threading
import traceback
from pathlib import Path

PRELOAD = "LAB_FORK_SERVER"


def _preload() -> None:
    """What the fork server imports: every lab module (so every library they import at the top), the libraries
    they import inside functions, then `labs` dropped again."""
    import importlib

    from labs.registry import LABS, module

    for name in LABS:
        module(name)
    for name in ("labs.__main__", "labs.core.runner", "labs.core.run", "trl", "peft", "accelerate",
                 "datasets", "transformers.trainer"):
        importlib.import_module(name)
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # noqa: F401 (trl imports these lazily)

    for name in [name for name in sys.modules if name == "labs" or name.startswith("labs.")]:
        del sys.modules[name]


if os.environ.get(PRELOAD) == "1":  # in the fork server, not in pytest
    try:
        _preload()
    except ImportError as exc:  # the fork server skips a preload that raises ImportError: this one must not pass
        raise RuntimeError(f"the fork server could not import the labs' libraries: {exc}") from exc


def _main(args: list[str], cwd: str, env: dict, stdout: str, stderr: str, path: list[str]) -> None:
    """In the forked process: become `python -m labs ARGS` in `cwd` with `env`, and exit with its status."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    out = os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = out if stderr == stdout else os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.path[:] = [cwd, *path]  # what `python -m` puts first: the working directory
    sys.argv = ["-m", *args]  # runpy puts the module's file first, as `python -m` does
    code = 0
    try:
        runpy.run_module("labs", run_name="__main__", alter_sys=True)
    except SystemExit as exc:  # as the interpreter reads it
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 (the interpreter's own handling of an uncaught exception)
        traceback.print_exc()
        code = 1
    # the interpreter's own exit: wait for the threads, then the atexit handlers (multiprocessing runs neither)
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


class Server:
    """The fork server of one pytest process, started on first use with the environment `env`."""

    def __init__(self, env: dict):
        self.env = env
        self.context = None

    def matches(self, env: dict) -> bool:
        return env == self.env

    def ensure_running(self) -> None:
        """Start the server (it imports the libraries before it forks the first lab) unless it runs already."""
        if self.context is None:
            self.context = multiprocessing.get_context("forkserver")
            self.context.set_forkserver_preload([__name__])
            # sys.path as a fresh `python -m` in this environment has it, less its first entry (the directory)
            probe = "import json, sys; print(json.dumps(sys.path[1:]))"
            self.path = json.loads(subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True,
                                                  text=True, check=True).stdout)
            saved = dict(os.environ)  # the server inherits this process's environment when it starts
            os.environ.clear()
            # Python 3.11's fork server ignores the sys.path it is given: PYTHONPATH lets it import this module
            os.environ.update(self.env | {PRELOAD: "1", "PYTHONPATH": str(Path(__file__).parent)})
            try:
                from multiprocessing import forkserver

                forkserver.ensure_running()
            finally:
                os.environ.clear()
                os.environ.update(saved)

    def start(self, args: list[str], cwd: Path, env: dict, stdout: Path, stderr: Path) -> Forked:
        self.ensure_running()
        process = self.context.Process(target=_main, args=(args, str(cwd), env, str(stdout), str(stderr), self.path),
                                       name=f"lab {' '.join(args)}")
        process.start()
        return Forked(process)


_server: Server | None = None


def server(env: dict) -> Server:
    """This process's one fork server, in the environment of the first call: conftest.py is imported twice (as
    `conftest` by pytest, as `tests.conftest` by the test modules), and both must fork from the same server."""
    global _server
    if _server is None:
        _server = Server(env)
    return _server


class Forked:
    """The handful of subprocess.Popen's methods the suite uses, for a forked lab."""

    def __init__(self, process):
        self.process = process
        self.pid = process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired("python -m labs", timeout)
        return self.process.exitcode

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
