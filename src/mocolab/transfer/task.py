"""What a transfer task is: the pieces `mocolab <task>`, `mocolab compare` and `mocolab report`
read from the registry (mocolab.registry.TASKS). A task module builds one `Task` and registers
it (detect.py, segment.py); tasks.py imports the built-in ones."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Task:
    name: str  # the command, task.kind and the result file RUN_DIR/<name>.json
    help: str  # the command's one-line description
    default_preset: str  # transfer/presets/<name>.yaml used without --preset
    columns: tuple[tuple[str, str], ...]  # (key in the result, column title) in compare's tables
    add_arguments: Callable[[argparse.ArgumentParser], None]  # the command's data options
    source_from_args: Callable[[argparse.Namespace], Any]  # those options -> the data source `run` takes
    check_data: Callable[[str], None]  # a data folder, checked before any training (compare); raises DataError
    load_data: Callable[..., tuple]  # the dataset reader: (source, cfg) -> (train, test)
    build_model: Callable[..., Any]  # (cfg, backbone, meta, num_classes) -> the nn.Module fine-tuned
    metric: Callable[..., dict]  # the test split's scores (the result's headline keys among them)
    run: Callable[..., dict]  # (cfg, backbone source, data source, out, state=None) -> the result written
    headline: Callable[[dict], str]  # a result's one-line summary, as the command prints it
    metric_name: Callable[[Any], str]  # the metric named for tables, from the task's config

    @property
    def result_file(self) -> str:
        return f"{self.name}.json"
