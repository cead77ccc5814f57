"""The registry of task kinds: for each, its schema, the builder of its task, its dimensions and its checks.

Validation (dlnlab.experiments.checks), the guards (unknown keys, the memory estimate), the builder
(dlnlab.experiments.build.build_task), Hydra's ConfigStore and `--help` all read `TASKS`. A new task kind
is one schema dataclass and one `TASKS` entry here, its task class in dlnlab.tasks, and conf/task/<kind>.yaml.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from omegaconf import MISSING

from dlnlab.experiments.fields import need, option
from dlnlab.tasks import load_regression, make_completion, make_regression

__all__ = ["TaskConfig", "RegressionConfig", "RegressionFileConfig", "CompletionConfig", "TaskKind", "TASKS",
           "TASK_KINDS", "check_noise", "check_eig_gap", "check_regression", "check_completion",
           "build_regression", "build_regression_file", "build_completion"]


@dataclass
class TaskConfig:
    """What every task kind's schema has: its kind and the data seed."""
    kind: str = option(MISSING, "regression | regression_file | matrix_completion (set by task=...)")
    seed: int = option(0, "seeds the data, independently of the training seed")


@dataclass
class RegressionConfig(TaskConfig):
    """task=regression: a linear teacher with a given spectrum (dlnlab.tasks.make_regression)."""
    kind: str = option("regression", "the task's kind (set by task=regression)")
    m: int = option(64, "samples (rows of X)")
    d_x: int = option(6, "d_0, input width")
    d_y: int = option(4, "d_H, output width")
    spectrum: List[float] = option(
        [8.0, 4.0, 2.0, 1.0],
        "teacher singular values ([] : d_y..1); plateaus of the lab loss at sum_{i>r} s_i^2")
    noise: float = option(0.0, "std of the Gaussian label noise added to the teacher's outputs")
    whiten: bool = option(True, "whiten the inputs (Sigma_XX = I)")
    eig_gap_rtol: float = option(1e-6, "Assumption 1: distinct eigenvalues of Sigma within this relative gap")
    targets: str = option(
        "real",
        "real | classes (one-hot of argmax of the teacher output + noise: loss=cross_entropy)")


@dataclass
class RegressionFileConfig(TaskConfig):
    """task=regression_file: X and Y read from files (dlnlab.tasks.load_regression)."""
    kind: str = option("regression_file", "the task's kind (set by task=regression_file)")
    path: Optional[str] = option(None, ".npz with arrays X and Y (samples as rows)")
    x_path: Optional[str] = option(None, "or two CSV files")
    y_path: Optional[str] = option(None, "the CSV file of Y (with x_path)")
    eig_gap_rtol: float = option(1e-6, "Assumption 1: distinct eigenvalues of Sigma within this relative gap")


@dataclass
class CompletionConfig(TaskConfig):
    """task=matrix_completion: a noisy low-rank target, fully or partly observed (dlnlab.tasks.make_completion)."""
    kind: str = option("matrix_completion", "the task's kind (set by task=matrix_completion)")
    n1: int = option(10, "rows of the target = d_H")
    n2: int = option(10, "columns of the target = d_0")
    rank: int = option(1, "rank of the target before noise")
    singular_values: List[float] = option([10.0], "the target's singular values")
    noise: float = option(0.35, "std of the Gaussian noise added to every entry")
    observed_fraction: float = option(1.0, "1.0: the fully observed noisy variant (docs/theory.md §7)")
    observed_count: Optional[int] = option(None, "overrides observed_fraction")




@dataclass(frozen=True)
class TaskKind:
    """A task kind: its schema, the builder of its task, its (d_in, d_out, samples) when the config
    alone knows them, and its semantic checks (ConfigError naming the option)."""
    schema: type
    build: Callable[[Any], Any]
    dims: Callable[[Any], Optional[tuple]]
    check: Callable[[Any], None]


def check_noise(t) -> None:
    """task.noise is a finite std >= 0."""
    need(0 <= t.noise < math.inf, "task.noise", "a finite number >= 0", t.noise)


def check_eig_gap(t) -> None:
    """task.eig_gap_rtol (Assumption 1) is a tolerance in (0, 1)."""
    need(0 < t.eig_gap_rtol < 1, "task.eig_gap_rtol", "a tolerance in (0, 1)", t.eig_gap_rtol)


def check_regression(t) -> None:
    """The checks of task=regression."""
    need(t.targets in ("real", "classes"), "task.targets", "real | classes", t.targets)
    check_noise(t)
    check_eig_gap(t)


def check_completion(t) -> None:
    """The checks of task=matrix_completion."""
    check_noise(t)
    need(0 < t.observed_fraction <= 1, "task.observed_fraction", "a fraction in (0, 1]", t.observed_fraction)
    need(t.observed_count is None or t.observed_count >= 1, "task.observed_count",
         "null (use task.observed_fraction) or an integer >= 1", t.observed_count)


def build_regression(tc):
    """The RegressionTask of a task=regression config."""
    return make_regression(tc.m, tc.d_x, tc.d_y, list(tc.spectrum), tc.noise, tc.whiten,
                           tc.seed, tc.eig_gap_rtol, getattr(tc, "targets", "real"))


def build_regression_file(tc):
    """The RegressionTask of a task=regression_file config (read from its files)."""
    return load_regression(tc.path, tc.x_path, tc.y_path, tc.eig_gap_rtol)


def build_completion(tc):
    """The CompletionTask of a task=matrix_completion config."""
    return make_completion(tc.n1, tc.n2, tc.rank, list(tc.singular_values), tc.noise,
                           tc.observed_fraction, tc.observed_count, tc.seed)


TASKS: dict[str, TaskKind] = {
    "regression": TaskKind(RegressionConfig, build_regression,
                           dims=lambda t: (int(t.d_x), int(t.d_y), int(t.m)), check=check_regression),
    "regression_file": TaskKind(RegressionFileConfig, build_regression_file,
                                dims=lambda t: None, check=check_eig_gap),  # only the data knows them
    "matrix_completion": TaskKind(CompletionConfig, build_completion,
                                  dims=lambda t: (int(t.n2), int(t.n1), int(t.n1) * int(t.n2)),
                                  check=check_completion),
}
TASK_KINDS = tuple(TASKS)
