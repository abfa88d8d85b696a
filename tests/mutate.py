"""Mutation testing of the numeric core: plant one small bug at a time and see whether a test fails.

`make mutation` (or `python -m tests.mutate [--only PATH] [--workers N] [--report FILE]`). Not run
in CI: it takes about 20 minutes on 2 cores.

Each mutant changes one operator, comparison, constant, boolean, sign, or min/max-style call in one
of the modules of `TARGETS`, and runs that module's tests against it. A mutant is killed when a test
fails (or the run exceeds its time limit); it survives when they all pass. The kill rate is
killed / (mutants - declared equivalents). `EQUIVALENT` lists, with a reason, the mutants that
cannot change behaviour; every other survivor is a missing test.

Same operator set as mutmut and Stryker's basic ones (arithmetic, relational, constant and boolean
replacement); our own small runner so the heavy libraries (torch, Lightning, FAISS, scikit-learn)
are imported once and every mutant runs in a fork: each costs its tests' time, not an interpreter
start. The mutated module is served by an import hook in the forked child, so the working tree is
never written.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.abc
import importlib.util
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOPNET_UNIT = [  # the ProtoPNet tests that train nothing through a stage: seconds, not minutes
    f"tests/test_protopnet.py::test_{name}"
    for name in (
        "distances_equal_squared_cdist",
        "forward_is_min_pool_log_similarity_and_identity_last_layer",
        "losses_equal_their_definitions_in_plain_loops",
        "plan_matches_the_official_loop",
        "each_phase_trains_exactly_the_official_groups",
        "max_epochs_cuts_the_plan_or_is_refused_naming_the_schedule",
        "total_loss_is_the_official_weighted_sum_worked_by_hand",
        "learning_rates_and_optimizers_of_each_phase_follow_the_official_loop",
        "library_defaults_are_the_configured_official_settings",
        "push_at_end_and_last_layer_passes",
    )
]

FACADE = "tests/test_facade.py"  # the Python facade's tests: fast ones on the steps' new paths
# module -> (the functions / names to mutate, None for the whole module; the tests that cover it)
TARGETS: dict[str, tuple[set[str] | None, list[str]]] = {
    "proto_lightning/prototypes/nmf.py": (None, ["tests/test_nmf.py"]),
    "proto_lightning/prototypes/decomposition.py": (
        None,
        ["tests/test_decomposition.py", "tests/test_stream.py"],
    ),
    "proto_lightning/prototypes/stream.py": (None, ["tests/test_stream.py"]),
    "proto_lightning/prototypes/projection.py": (None, ["tests/test_projection.py"]),
    "proto_lightning/prototypes/boxes.py": (
        None,
        [
            "tests/test_boxes.py",
            f"{FACADE}::test_nearest_patches_are_the_brute_force_winners_of_a_shuffled_loader",
        ],
    ),
    "proto_lightning/prototypes/features.py": (
        None,
        [
            "tests/test_features.py",
            "tests/test_stream.py",
            f"{FACADE}::test_a_dataset_without_a_label_list_gives_the_same_prototypes",
            f"{FACADE}::test_labels_outside_the_heads_classes_are_refused_before_factorising",
        ],
    ),
    "proto_lightning/prototypes/network.py": (
        None,
        [
            "tests/test_posthoc.py::test_explain_ranks_contributions_that_sum_to_the_logit",
            "tests/test_report.py::test_a_negative_term_is_labelled_as_counting_against",
            "tests/test_protopnet.py::test_push_puts_every_prototype_on_its_nearest_own_class_patch",
        ],
    ),
    "proto_lightning/metrics/part_consistency.py": (None, ["tests/test_part_consistency.py"]),
    "proto_lightning/metrics/bootstrap.py": (None, ["tests/test_bootstrap.py"]),
    "proto_lightning/metrics/faithfulness.py": (None, ["tests/test_faithfulness.py"]),
    "proto_lightning/metrics/part_peaks.py": (None, ["tests/test_part_peaks.py"]),
    "proto_lightning/models/protopnet_losses.py": (None, PROTOPNET_UNIT),
    "proto_lightning/models/protopnet_schedule.py": (None, PROTOPNET_UNIT),
    "proto_lightning/models/protopnet.py": (  # the loss and the schedule's wiring only
        {
            "LOSS_DEFAULTS",
            "OPTIMIZER_DEFAULTS",
            "TRAINABLE",
            "OPTIMIZER_INDEX",
            "losses",
            "configure_optimizers",
            "on_train_epoch_start",
            "set_phase",
            "step_of_epoch",
        },
        PROTOPNET_UNIT,
    ),
    "proto_lightning/data/transforms.py": (
        None,
        [
            "tests/test_transforms.py",
            "tests/test_part_consistency.py::"
            "test_reference_keypoints_follow_evalprotopnets_integer_arithmetic",
        ],
    ),
}

# (module, line, mutation) -> why it cannot change what the package computes
_FROZEN = "dataclass(frozen=True) only forbids assigning a field, which no code does"
_PASSED = "a default every caller in the package passes explicitly (from conf/)"
_FLOOR = "a floor against dividing by zero: any tiny positive value gives the same numbers"
_ONE_CHUNK = "concatenating a single chunk gives that chunk"
_INFER = "numpy reads any negative size in a reshape as 'infer it'"
_NOOP = "the augmentation at strength 0 is the identity (flip with p 0, 0 degrees, jitter 0)"
P, D, M = "proto_lightning/prototypes/", "proto_lightning/data/", "proto_lightning/metrics/"
EQUIVALENT: dict[tuple[str, int, str], str] = {
    (P + "nmf.py", 18, "1e-12 -> 2e-12"): _FLOOR,
    (P + "nmf.py", 35, "sum() -> mean()"): "a row's sum and mean are positive together",
    (P + "nmf.py", 37, "drop USub"): "squeeze(1) and squeeze(-1) of a (C, 1) tensor are the same",
    (P + "nmf.py", 65, "200 -> 201"): _PASSED,
    (P + "nmf.py", 66, "0.0001 -> 0.0002"): _PASSED,
    (P + "nmf.py", 67, "0 -> 1"): _PASSED,
    (P + "nmf.py", 87, "Lt -> LtE"): "differs only when the relative decrease equals tol exactly",
    (P + "decomposition.py", 126, "1e-300 -> 2e-300"): _FLOOR,
    (P + "decomposition.py", 128, "1e-300 -> 2e-300"): _FLOOR,
    (P + "decomposition.py", 134, "1e-300 -> 2e-300"): _FLOOR,
    (P + "decomposition.py", 134, "Gt -> GtE"): "a zero row divided by the floor is zero as well",
    (P + "decomposition.py", 176, "1.0 -> 2.0"): "a zero heatmap divided by any positive number "
    "stays zero",
    (P + "decomposition.py", 182, "True -> False"): _FROZEN,
    (P + "decomposition.py", 191, "True -> False"): _FROZEN,
    (P + "decomposition.py", 217, "max() -> min()"): "softmax is shift-invariant (overflow guard)",
    (P + "decomposition.py", 217, "Sub -> Add"): "softmax is shift-invariant (overflow guard)",
    (P + "decomposition.py", 234, "LtE -> Lt"): "on a tie the two betas have the same objective",
    (P + "decomposition.py", 257, "LtE -> Lt"): "on a tie the two splits have the same objective",
    (P + "decomposition.py", 277, "0 -> 1"): _PASSED,
    (P + "decomposition.py", 293, "FloorDiv -> Div"): "first is a multiple of cpb: / and // agree",
    (P + "projection.py", 187, "262144 -> 262145"): "the buffer size changes when patches are "
    "added to FAISS, never which patches or the answers",
    (P + "projection.py", 223, "Gt -> GtE"): _ONE_CHUNK,
    (P + "projection.py", 237, "1 -> 2"): _INFER,
    (P + "features.py", 115, "1 -> 2"): _INFER,
    (P + "features.py", 116, "1 -> 2"): _INFER,
    (
        P + "projection.py",
        241,
        "Lt -> LtE",
    ): "a stable sort of already grouped labels is the identity",
    (P + "projection.py", 241, "0 -> 1"): "a stable sort of already grouped labels is the identity",
    (P + "projection.py", 246, "True -> False"): "the two sequences always have equal lengths",
    (P + "projection.py", 274, "1 -> 2"): "the first of the 2 nearest is the nearest",
    (P + "projection.py", 277, "Gt -> GtE"): _ONE_CHUNK,
    (P + "projection.py", 285, "4 -> 5"): "a slice past the last column ends at the last column",
    (P + "projection.py", 57, "True -> False"): _FROZEN,
    (
        P + "network.py",
        49,
        "True -> False",
    ): "the ranks and contributions always have equal lengths",
    (P + "boxes.py", 25, "2 -> 3"): "the support of a gradient does not depend on how many random "
    "probes measure it (2 already rule out a cancellation)",
    (P + "boxes.py", 26, "0 -> 1"): "as for the number of probes: any random probe",
    (P + "boxes.py", 27, "1.0 -> 2.0"): "a probe scale only has to switch some units on: 2 does "
    "as 1 does",
    (P + "boxes.py", 27, "1000.0 -> 2000.0"): "a large probe scale only has to outweigh the "
    "biases: 2000 does as 1000 does",
    (
        P + "boxes.py",
        49,
        "sum() -> mean()",
    ): "scaling the output scales the gradient, not its support",
    (P + "boxes.py", 50, "sum() -> mean()"): "a sum and a mean of |g| are positive together",
    (M + "bootstrap.py", 12, "True -> False"): _FROZEN,
    (M + "bootstrap.py", 27, "1000 -> 1001"): _PASSED,
    (M + "bootstrap.py", 29, "0 -> 1"): _PASSED,
    (M + "faithfulness.py", 60, "1 -> 2"): "RISE's kernel is square: its shape[-2] is shape[-1]",
    (M + "faithfulness.py", 60, "drop USub"): "RISE's kernel is square: its shape[1] is shape[-1]",
    (M + "faithfulness.py", 118, "100 -> 101"): _PASSED,
    (M + "faithfulness.py", 120, "256 -> 257"): "batching: the same curves in other batches",
    (M + "faithfulness.py", 152, "100 -> 101"): _PASSED,
    (M + "part_consistency.py", 136, "Sub -> Add"): "the clamp's upper end: part ids never exceed "
    "the parts.txt count the records were read with",
    (M + "part_consistency.py", 139, "True -> False"): "reducing into zeros with or without them",
    (M + "part_consistency.py", 145, "Sub -> Add"): "the clamp's upper end, as above",
    (M + "part_consistency.py", 147, "True -> False"): "reducing into zeros with or without them",
    (M + "part_consistency.py", 192, "Add -> Sub"): "the noise is a symmetric Gaussian: minus it "
    "is the same distribution",
    (M + "part_peaks.py", 42, "0 -> 1"): "part ids start at 1: >= 1 and >= 0 select the same hits",
    (
        M + "part_peaks.py",
        42,
        "GtE -> Gt",
    ): "part ids start at 1: > 0 and >= 0 select the same hits",
    (M + "part_peaks.py", 65, "0 -> 1"): "part ids start at 1: >= 1 and >= 0 count the same hits",
    (M + "part_peaks.py", 65, "GtE -> Gt"): "part ids start at 1: > 0 and >= 0 count the same hits",
    ("proto_lightning/models/protopnet_schedule.py", 18, "True -> False"): _FROZEN,
    ("proto_lightning/models/protopnet_schedule.py", 27, "True -> False"): _FROZEN,
    (D + "transforms.py", 21, "True -> False"): _FROZEN,
    (D + "transforms.py", 27, "1.0 -> 2.0"): "scale_min 2 is no crop, as 1 is",
    (D + "transforms.py", 97, "1.0 -> 2.0"): "torchvision's crop sampler rejects areas above the "
    "image's, so the crops it keeps have the same distribution",
    (D + "transforms.py", 100, "Gt -> GtE"): _NOOP,
    (D + "transforms.py", 102, "Gt -> GtE"): _NOOP,
    (D + "transforms.py", 104, "Gt -> GtE"): _NOOP,
}

BINARY = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
}
COMPARE = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
CALLS = {
    "max": "min",
    "min": "max",
    "amax": "amin",
    "amin": "amax",
    "argmax": "argmin",
    "argmin": "argmax",
    "mean": "sum",
    "sum": "mean",
    "clamp_min": "clamp_max",
    "clamp_max": "clamp_min",
    "floor": "ceil",
    "ceil": "floor",
}
SKIPPED_CALLS = {"debug", "info", "warning", "error", "exception", "getLogger"}  # logging


@dataclass
class Mutant:
    """One planted bug: where, what, and what the tests said."""

    module: str
    line: int
    mutation: str
    outcome: str = ""  # killed | survived | timeout | equivalent
    seconds: float = 0.0


def _name(node: ast.AST) -> str:
    return type(node).__name__


class Mutator(ast.NodeTransformer):
    """Walks a module; with `target=None` lists mutation sites, with `target=i` applies the i-th."""

    def __init__(self, scope: set[str] | None, target: int | None = None) -> None:
        self.scope, self.target = scope, target
        self.sites: list[tuple[int, str]] = []
        self._inside: list[str] = []

    def _in_scope(self) -> bool:
        return self.scope is None or any(name in self.scope for name in self._inside)

    def _site(self, node: ast.AST, label: str) -> bool:
        """Record a site; True when it is the one to mutate."""
        if not self._in_scope():
            return False
        self.sites.append((getattr(node, "lineno", 0), label))
        return self.target == len(self.sites) - 1

    def _scoped(self, node: ast.AST, name: str) -> ast.AST:
        self._inside.append(name)
        self.generic_visit(node)
        self._inside.pop()
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.returns = None  # an annotation is not behaviour
        return self._scoped(node, node.name)

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        return self._scoped(node, node.name)

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        return self._scoped(node, names[0]) if names else self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is not None:  # the annotation is not behaviour
            name = node.target.id if isinstance(node.target, ast.Name) else ""
            self._inside.append(name)
            node.value = self.visit(node.value)
            self._inside.pop()
        return node

    def visit_arguments(self, node: ast.arguments) -> ast.AST:
        node.defaults = [self.visit(d) for d in node.defaults]
        node.kw_defaults = [d if d is None else self.visit(d) for d in node.kw_defaults]
        return node  # argument annotations are not behaviour

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        return node  # error messages: tested by the error tests, not by numbers

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        return node

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if called in SKIPPED_CALLS:
            return node
        self.generic_visit(node)
        if called in CALLS and self._site(node, f"{called}() -> {CALLS[called]}()"):
            if isinstance(func, ast.Attribute):
                func.attr = CALLS[called]
            else:
                func.id = CALLS[called]
        return node

    def _swap_operator(self, node: ast.BinOp | ast.AugAssign, suffix: str) -> ast.AST:
        self.generic_visit(node)
        new = BINARY.get(type(node.op))
        if new and self._site(node, f"{_name(node.op)}{suffix} -> {new.__name__}{suffix}"):
            node.op = new()
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        return self._swap_operator(node, "")

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        return self._swap_operator(node, "=")

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            new = COMPARE.get(type(op))
            if new and self._site(node, f"{_name(op)} -> {new.__name__}"):
                node.ops[i] = new()
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        if self._site(node, f"{_name(node.op)} -> {new.__name__}"):
            node.op = new()
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.USub | ast.Not) and self._site(node, f"drop {_name(node.op)}"):
            return node.operand
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if isinstance(value, bool):
            if self._site(node, f"{value} -> {not value}"):
                return ast.copy_location(ast.Constant(not value), node)
        elif isinstance(value, int | float) and not isinstance(value, complex):
            new = value + 1 if isinstance(value, int) else (value * 2 if value else 1.0)
            if self._site(node, f"{value!r} -> {new!r}"):
                return ast.copy_location(ast.Constant(new), node)
        return node


def mutants_of(module: str, scope: set[str] | None) -> tuple[ast.Module, list[tuple[int, str]]]:
    """The module's tree and its mutation sites."""
    tree = ast.parse((ROOT / module).read_text())
    finder = Mutator(scope)
    finder.visit(copy.deepcopy(tree))
    return tree, finder.sites


def mutated_source(tree: ast.Module, scope: set[str] | None, index: int) -> str:
    """The module's source with mutation `index` applied."""
    mutated = Mutator(scope, target=index).visit(copy.deepcopy(tree))
    return ast.unparse(ast.fix_missing_locations(mutated))


class _Serve(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook: the mutated module's source for its name, everything else as usual."""

    def __init__(self, name: str, path: Path, source: str) -> None:
        self.name, self.path, self.source = name, path, source

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102
        if fullname != self.name:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=str(self.path))

    def create_module(self, spec):  # noqa: D102
        return None

    def exec_module(self, module) -> None:  # noqa: D102
        module.__file__ = str(self.path)
        exec(compile(self.source, str(self.path), "exec"), module.__dict__)


def _run_tests(tests: list[str], module: str | None, source: str | None) -> None:
    """In a forked child: serve the mutant, run the tests quietly, exit with pytest's code."""
    import pytest
    import torch

    torch.set_num_threads(1)
    os.environ["PROTO_LIGHTNING_MUTANT"] = "1"
    if module is not None and source is not None:
        name = module.removesuffix(".py").replace("/", ".")
        sys.meta_path.insert(0, _Serve(name, ROOT / module, source))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    code = pytest.main(
        ["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests, "-W", "ignore"]
    )
    os._exit(int(code))


def _start(tests: list[str], module: str | None, source: str | None) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            _run_tests(tests, module, source)
        finally:
            os._exit(99)
    return pid


def _preload() -> None:
    """Import what every child needs once, in the parent, before any fork."""
    import faiss  # noqa: F401
    import hydra  # noqa: F401
    import lightning  # noqa: F401
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401


def run(jobs: list[tuple[Mutant, list[str], str]], workers: int, limits: dict[str, float]) -> None:
    """Run every mutant's tests, `workers` at a time; a run past its module's limit is killed."""
    pending, running = list(jobs), {}
    while pending or running:
        while pending and len(running) < workers:
            mutant, tests, source = pending.pop(0)
            running[_start(tests, mutant.module, source)] = (mutant, time.monotonic())
        time.sleep(0.05)
        for pid, (mutant, started) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            elapsed = time.monotonic() - started
            if done:
                code = os.waitstatus_to_exitcode(status)
                mutant.outcome = "survived" if code == 0 else "killed"
            elif elapsed > limits[mutant.module]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                mutant.outcome = "timeout"
            else:
                continue
            mutant.seconds = round(elapsed, 1)
            del running[pid]
            print(
                f"{mutant.outcome:9s} {mutant.module}:{mutant.line}: {mutant.mutation}", flush=True
            )


def baseline(module: str, tests: list[str]) -> float:
    """Seconds the unmutated tests take; they must pass."""
    started = time.monotonic()
    _, status = os.waitpid(_start(tests, None, None), 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"the tests of {module} fail without any mutant: {' '.join(tests)}")
    return time.monotonic() - started


def summary(mutants: list[Mutant]) -> dict[str, dict[str, int]]:
    """Per module: mutants, killed (timeouts included), survived, equivalent, kill rate in %."""
    table: dict[str, dict[str, int]] = {}
    for m in mutants:
        row = table.setdefault(
            m.module, {"mutants": 0, "killed": 0, "survived": 0, "equivalent": 0}
        )
        row["mutants"] += 1
        row["killed" if m.outcome in ("killed", "timeout") else m.outcome] += 1
    keys = ("mutants", "killed", "survived", "equivalent")
    table["total"] = {k: sum(r[k] for r in table.values()) for k in keys}
    for counts in table.values():
        counts["kill_rate"] = round(
            100 * counts["killed"] / max(1, counts["mutants"] - counts["equivalent"])
        )
    return table


def main(argv: list[str] | None = None) -> int:
    """Plan, run and report the mutants."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="a module path of TARGETS (repeatable)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--report", type=Path, default=ROOT / "runs" / "mutation.json")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    args = parser.parse_args(argv)
    targets = {m: t for m, t in TARGETS.items() if not args.only or m in args.only}
    _preload()
    jobs, mutants, limits = [], [], {}
    for module, (scope, tests) in targets.items():
        tree, sites = mutants_of(module, scope)
        if not args.list:
            limits[module] = 3 * baseline(module, tests) + 15
        for index, (line, label) in enumerate(sites):
            mutant = Mutant(module, line, label)
            mutants.append(mutant)
            if (module, line, label) in EQUIVALENT:
                mutant.outcome = "equivalent"
            elif not args.list:
                jobs.append((mutant, tests, mutated_source(tree, scope, index)))
    if args.list:
        for m in mutants:
            print(f"{m.module}:{m.line}: {m.mutation}")
        return 0
    started = time.monotonic()
    run(jobs, args.workers, limits)
    table = summary(mutants)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(
        json.dumps({"summary": table, "mutants": [asdict(m) for m in mutants]}, indent=1)
    )
    print("\nsurvivors:")
    for m in mutants:
        if m.outcome == "survived":
            print(f"  {m.module}:{m.line}: {m.mutation}")
    for module, row in table.items():
        print(
            f"{module:50s} {row['killed']:4d}/{row['mutants'] - row['equivalent']:4d} killed "
            f"({row['kill_rate']}%), {row['equivalent']} equivalent"
        )
    print(f"{len(jobs)} mutants in {time.monotonic() - started:.0f} s; report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
