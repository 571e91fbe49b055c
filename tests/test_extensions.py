"""A user's own stage, task and teacher backend: by import path, by entry point, and the
README's example run verbatim."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from curation.store import DatasetStore
from factory.tasks.base import Task, generation_columns, records_frame
from factory.teachers.base import Generation, Sample, TeacherIdentity, TeacherRequest
from factory.teachers.managed import ManagedTeacher

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(language: str, containing: str) -> str:
    """The README's fenced `language` block that contains `containing`."""
    blocks = re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    matches = [block for block in blocks if containing in block]
    assert len(matches) == 1, f"one {language} block with {containing!r} expected in README.md"
    return matches[0]


SEEDS = [
    {"prompt": "Name a colour.", "answer": "Blue."},
    {"prompt": "Describe the sea.", "answer": "Wide, deep and always moving."},
    {"prompt": "Say hello.", "answer": "Hello there, friend."},
]


def seeded_config(directory: Path, **sections) -> Path:
    (directory / "seeds.jsonl").write_text("".join(json.dumps(row) + "\n" for row in SEEDS))
    config = {
        "name": "ext",
        "run_dir": str(directory / "runs"),
        "seeds": {"path": "seeds.jsonl", "columns": {"instruction": "prompt", "response": "answer"}},
        "publish": {"name": "ext", "root": str(directory / "datasets")},
        **sections,
    }
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A directory on sys.path, as a user's own package would be."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in [name for name in sys.modules if name.startswith("my_")]:
        del sys.modules[name]


def test_readme_stage_example_runs_verbatim(user_dir, run_cli):
    (user_dir / "my_filters.py").write_text(readme_block("python", "class MinWords(Stage)"))
    curation = yaml.safe_load(readme_block("yaml", "my_filters:MinWords"))["curation"]
    code, out, err = run_cli("run", seeded_config(user_dir, curation=curation))
    assert code == 0, err
    version = DatasetStore(user_dir / "datasets").resolve("ext@v1")
    rejected = version.read_rejected(["instruction", "drop_stage", "drop_reason"])
    assert rejected.to_dicts() == [
        {"instruction": "Name a colour.", "drop_stage": "min_words", "drop_reason": "too_few_words"}
    ]
    assert sorted(version.read(["instruction"])["instruction"]) == ["Describe the sea.", "Say hello."]
    assert version.manifest["funnel"][-1]["stage"] == "min_words"
    # The manifest records the config with paths relative to it, not this machine's paths.
    assert version.manifest["config"]["seeds"]["path"] == "seeds.jsonl"
    assert str(user_dir) not in json.dumps(version.manifest["config"])


def test_stage_by_entry_point_name(user_dir, run_cli):
    (user_dir / "my_filters.py").write_text(readme_block("python", "class MinWords(Stage)"))
    dist = user_dir / "my_filters-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-filters\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[stillhouse.stages]\nmin_words = my_filters:MinWords\n")
    config = seeded_config(user_dir, curation=[{"stage": "min_words", "min_words": 4}])
    code, _, err = run_cli("run", config)
    assert code == 0, err
    rejected = DatasetStore(user_dir / "datasets").resolve("ext@v1").read_rejected(["drop_stage"])
    assert rejected["drop_stage"].to_list() == ["min_words", "min_words"]  # "Blue." and "Hello there, friend."


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"stage": "my_missing:Filter"}, "run.yaml:{line}: curation.0.stage: cannot import my_missing"),
        ({"stage": "json:dumps"}, "run.yaml:{line}: curation.0.stage: stage 'json:dumps' is not a subclass of"),
        ({"stage": "min_wordz"}, "run.yaml:{line}: curation.0.stage: unknown stage 'min_wordz' (built-ins: heuristics"),
        ({"stage": "my_filters:MinWords", "min_wrds": 3}, "got an unexpected keyword argument 'min_wrds'"),
    ],
)
def test_bad_plugin_is_a_config_error_at_its_line(user_dir, run_cli, entry, message):
    (user_dir / "my_filters.py").write_text(readme_block("python", "class MinWords(Stage)"))
    config = seeded_config(user_dir, curation=[entry])
    line = config.read_text().splitlines().index("- stage: " + entry["stage"]) + 1
    code, _, err = run_cli("config", "validate", config)
    assert code == 1
    assert message.format(line=line) in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err


class Shout(Task):
    """A user's task: asks the teacher to repeat each instruction, louder."""

    stage = "shout"

    def __init__(self, suffix: str = "!") -> None:
        self.suffix = suffix

    async def run(self, records: pl.DataFrame, teacher, shards=None) -> pl.DataFrame:
        requests = [TeacherRequest.chat(text + self.suffix) for text in records["instruction"]]
        generations = await teacher.generate(requests)
        return records_frame([{**row, **generation_columns(g)} for row, g in zip(records.to_dicts(), generations)])

    def estimate_requests(self, n_records: int) -> int:
        return n_records


class UpperTeacher(ManagedTeacher):
    """A user's backend: answers with the prompt in capitals (`style: lower` for the opposite)."""

    def __init__(self, config, **machinery) -> None:
        super().__init__(TeacherIdentity(backend="upper", model=config.model), **machinery)
        self.style = (config.model_extra or {}).get("style", "upper")

    async def _generate_one(self, request: TeacherRequest) -> Generation:
        text = request.messages[-1][1]
        text = text.upper() if self.style == "upper" else text.lower()
        return Generation(request=request, teacher=self.identity, samples=[Sample(text=text, finish_reason="stop")])


def test_task_and_teacher_by_import_path(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = seeded_config(
        tmp_path,
        teacher={"backend": "test_extensions:UpperTeacher", "model": "upper-1", "style": "upper"},
        tasks=[{"type": "test_extensions:Shout", "suffix": "?"}],
    )
    code, out, err = run_cli("run", config)
    assert code == 0, err
    kept = DatasetStore(tmp_path / "datasets").resolve("ext@v1").read(["instruction", "response", "teacher"])
    assert sorted(kept["response"]) == ["DESCRIBE THE SEA.?", "NAME A COLOUR.?", "SAY HELLO.?"]
    assert set(kept["teacher"].struct.field("backend")) == {"upper"}
