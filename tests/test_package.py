"""The package's names load on first use (PEP 562): each is its module's object, the list the type
checkers and the API docs read is the same list, and Ctrl-C while the command line loads torch
ends as any Ctrl-C does, as does Ctrl-C while a library's worker thread is still busy."""
import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import corolla


def test_every_public_name_is_its_module_s_object():
    for name in corolla.__all__:
        module = importlib.import_module(corolla._PUBLIC[name], "corolla")
        assert getattr(corolla, name) is (module if module.__name__ == f"corolla.{name}" else getattr(module, name))
    assert set(dir(corolla)) >= set(corolla.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        corolla.nothing_here  # noqa: B018


def test_the_names_for_type_checkers_are_the_lazy_ones():
    tree = ast.parse(Path(corolla.__file__).read_text())
    guarded = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    imported = [alias.asname or alias.name for node in guarded.body for alias in node.names]
    assert sorted(imported) == sorted(corolla.__all__)


# Ctrl-C arriving while torch loads, made certain: the import of torch raises it
INTERRUPT_TORCH = """
import importlib.abc, sys

class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise KeyboardInterrupt

sys.meta_path.insert(0, CtrlC())
sys.argv = ["corolla", "models"]
"""


# Ctrl-C while a worker thread a library started is busy, as torch.compile's compiler threads are
# (each waiting on g++ for tens of seconds): the command must not wait for it to finish.
BUSY_WORKER = """
import concurrent.futures, sys, threading
import corolla.cli.models

def interrupted_while_a_worker_is_busy(args):
    started = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    pool.submit(lambda: (started.set(), threading.Event().wait(3600)))
    started.wait()
    raise KeyboardInterrupt

corolla.cli.models.run_models = interrupted_while_a_worker_is_busy
sys.argv = ["corolla", "models"]
"""


@pytest.mark.slow  # starts subprocesses
@pytest.mark.parametrize("start", ["from corolla.cli import console; console()", "import runpy; "
                                   "runpy.run_module('corolla', run_name='__main__')"], ids=["command", "python -m"])
@pytest.mark.parametrize("when", [INTERRUPT_TORCH, BUSY_WORKER], ids=["loading", "busy-thread"])
def test_ctrl_c_is_one_line_exit_130_and_at_once(when, start):
    root = str(Path(corolla.__file__).parents[1])
    # a busy worker would hold the interpreter for an hour: the timeout fails the test, not a sleep
    done = subprocess.run([sys.executable, "-c", when + start], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": root})
    assert (done.returncode, done.stderr) == (130, "corolla: interrupted\n")
