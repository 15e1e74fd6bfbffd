"""Which tests can depend on the detectron2 version: a pytest plugin that records, per test, the
detectron2 functions that run in the test process (setup, call, teardown) and whether the test
starts a process (whose detectron2 calls it cannot see), and a report that compares each such
function with another detectron2 source tree (AST of the function, plus the module's and classes'
non-function statements: constants, imports, class attributes).

A test is version-invariant when it starts no process and every detectron2 function it ran is
the same in both trees. The Makefile's note on `make test-d2main` was measured with it:

    PYTHONPATH=tools python -m pytest -q -p d2_version_exposure tests/modeling   # writes the trace
    tar xzf ../shared/third_party/detectron2-02b5c4e.tar.gz -C /tmp/d2main-src
    python tools/d2_version_exposure.py "$(python -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')" \\
        /tmp/d2main-src/detectron2 d2_version_exposure.jsonl

Trace file: $D2AF_EXPOSURE_OUT (default d2_version_exposure.jsonl), one JSON line per test.
"""
import ast
import json
import os
import sys
import threading
from collections import defaultdict

_OUT = os.environ.get("D2AF_EXPOSURE_OUT", "d2_version_exposure.jsonl")
_state = {"root": None, "calls": set(), "process": False}


# ------------------------------------------------------------------------------- pytest plugin
def _profile(frame, event, arg):
    if event != "call":
        return
    code = frame.f_code
    path = code.co_filename
    if path.startswith(_state["root"]):
        _state["calls"].add((path[len(_state["root"]):], code.co_qualname))
    elif (path.endswith("subprocess.py") and code.co_name == "_execute_child") or \
            ("multiprocessing" in path and code.co_name in ("_launch", "start_processes")):
        _state["process"] = True


def pytest_configure(config):
    import detectron2

    _state["root"] = os.path.dirname(os.path.abspath(detectron2.__file__)) + os.sep


def _wrap():
    import pytest

    @pytest.hookimpl(hookwrapper=True)
    def wrapper(item, nextitem):
        _state["calls"], _state["process"] = set(), False
        sys.setprofile(_profile)
        threading.setprofile(_profile)
        try:
            yield
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
            with open(_OUT, "a") as f:
                f.write(json.dumps({"test": item.nodeid, "process": _state["process"],
                                    "calls": sorted(_state["calls"])}) + "\n")
    return wrapper


if "pytest" in sys.modules:
    pytest_runtest_protocol = _wrap()


# ------------------------------------------------------------------------------------- report
def _skeleton(body):
    out = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append(("def", node.name, ast.dump(node.args), [ast.dump(d) for d in node.decorator_list]))
        elif isinstance(node, ast.ClassDef):
            out.append(("class", node.name, [ast.dump(b) for b in node.bases],
                        [ast.dump(d) for d in node.decorator_list], _skeleton(node.body)))
        else:
            out.append(ast.dump(node))
    return out


def _find(tree, qualname):
    node = tree
    for part in qualname.split("."):
        if part == "<locals>":
            continue
        if part.startswith("<"):  # <lambda>, <listcomp>, <genexpr>: compare the enclosing function
            break
        defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        match = [n for n in ast.walk(node) if isinstance(n, defs) and n.name == part]
        if not match:
            return None
        node = match[-1]
    return node


def report(root_a, root_b, trace):
    parsed = {}

    def parse(root, rel):
        if (root, rel) not in parsed:
            path = os.path.join(root, rel)
            parsed[root, rel] = ast.parse(open(path).read()) if os.path.isfile(path) else None
        return parsed[root, rel]

    same_cache = {}

    def same(rel, qualname):
        if (rel, qualname) not in same_cache:
            a, b = parse(root_a, rel), parse(root_b, rel)
            ok = a is not None and b is not None and _skeleton(a.body) == _skeleton(b.body)
            if ok:
                fa, fb = _find(a, qualname), _find(b, qualname)
                ok = fa is not None and fb is not None and ast.dump(fa) == ast.dump(fb)
            same_cache[rel, qualname] = ok
        return same_cache[rel, qualname]

    files = defaultdict(lambda: {"tests": 0, "invariant": 0, "process": 0, "differ": set()})
    for line in open(trace):
        rec = json.loads(line)
        entry = files[rec["test"].split("::")[0]]
        entry["tests"] += 1
        entry["process"] += rec["process"]
        differ = {f"{rel}:{q}" for rel, q in rec["calls"] if not same(rel, q)}
        entry["differ"] |= differ
        entry["invariant"] += not differ and not rec["process"]
    for name, e in sorted(files.items()):
        print(f"{name}: {e['invariant']}/{e['tests']} version-invariant, {e['process']} start a process; "
              f"differing detectron2 functions run: {', '.join(sorted(e['differ'])[:5]) or 'none'}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    report(*sys.argv[1:])
