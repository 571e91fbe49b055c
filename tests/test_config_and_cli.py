import json
import re

import polars as pl
import pytest
import yaml

from curation.store import DatasetStore
from factory.errors import ConfigError
from stillhouse.config import RunConfig, load_run_config

GOOD = """\
name: tickets
seeds:
  path: seeds.jsonl
  columns:
    instruction: text
publish:
  name: tickets
"""


def write(tmp_path, text, name="run.yaml"):
    (tmp_path / "seeds.jsonl").write_text('{"text": "Say hello to a new customer."}\n')
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_good_config_loads(tmp_path):
    config = load_run_config(write(tmp_path, GOOD))
    assert config.seeds.columns.instruction == "text"
    assert config.publish.root.name == "datasets_out"


def test_unknown_key_is_rejected_with_its_line(tmp_path):
    text = GOOD.replace("    instruction: text\n", "    instruction: text\n    instrution: typo\n")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_run_config(path)
    assert str(error.value) == f"{path}:6: unknown key 'instrution' (at seeds.columns.instrution)"


def test_wrong_value_names_line_and_key(tmp_path):
    path = write(tmp_path, GOOD.replace("  name: tickets\n", "  name: bad/name\n"))
    with pytest.raises(ConfigError, match=r"run.yaml:7: publish.name: letters, digits"):
        load_run_config(path)


def test_missing_section_is_named(tmp_path):
    path = write(tmp_path, "name: x\nseeds:\n  path: s.jsonl\n")
    with pytest.raises(ConfigError, match="publish: Field required"):
        load_run_config(path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("name: [unclosed\n", r"run.yaml:2:1: invalid YAML"),
        ("", "config file is empty"),
        (b"name: caf\xe9\n", r"run.yaml:1: not UTF-8 text \(byte 0xe9\)"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_broken_files_give_one_clear_error(tmp_path, content, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(write(tmp_path, content))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_run_config(tmp_path / "nope.yaml")


def test_cli_version_and_help(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0 and out.startswith("stillhouse ")
    for args in (["--help"], ["datasets", "--help"], ["datasets", "diff", "--help"], ["config", "schema", "--help"]):
        code, out, _ = run_cli(*args)
        assert code == 0 and "Usage" in out


def test_cli_config_schema_is_json_schema(run_cli):
    code, out, _ = run_cli("config", "schema")
    schema = json.loads(out)
    assert code == 0
    assert schema["title"] == RunConfig.__name__
    assert schema["additionalProperties"] is False


def test_cli_config_validate_reports_line(run_cli, tmp_path):
    path = write(tmp_path, GOOD + "extra: 1\n")
    code, _, err = run_cli("config", "validate", path)
    assert code == 1
    assert "run.yaml:8: unknown key 'extra'" in err
    assert "Traceback" not in err


def _publish_two(root):
    frame = pl.DataFrame({"id": ["a", "b"], "instruction": ["x", "y"], "input": ["", ""], "origin": ["seed", "seed"]})
    store = DatasetStore(root)
    store.publish("demo", frame)
    store.publish("demo", frame.with_columns(instruction=pl.lit("z")), parent="demo@v1")


def test_cli_datasets_commands(run_cli, tmp_path):
    _publish_two(tmp_path)
    code, out, _ = run_cli("datasets", "list", "--root", tmp_path)
    assert code == 0 and "demo@v2" in out
    code, out, _ = run_cli("datasets", "show", "demo@v2", "--root", tmp_path)
    assert code == 0 and "parent: demo@v1" in out and "2 kept" in out
    code, out, _ = run_cli("datasets", "verify", "demo@latest", "--root", tmp_path)
    assert code == 0 and "demo@v2: OK" in out
    code, out, _ = run_cli("datasets", "diff", "demo@v1", "demo@v2", "--root", tmp_path, "--json")
    assert code == 0 and json.loads(out)["changed"] == ["a", "b"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["datasets", "show", "nope"], "unknown dataset 'nope'"),
        (["datasets", "show", "demo@v7"], "unknown version demo@v7"),
        (["datasets", "verify", "demo@v1"], "data.parquet does not match the sha256"),
        (["datasets", "show", "demo@v2"], "manifest.json is malformed"),
    ],
)
def test_cli_errors_are_one_line(run_cli, tmp_path, args, message):
    _publish_two(tmp_path)
    data = tmp_path / "demo" / "v1" / "data.parquet"
    data.chmod(0o644)
    data.write_bytes(data.read_bytes() + b"x")
    manifest = tmp_path / "demo" / "v2" / "manifest.json"
    manifest.chmod(0o644)
    manifest.write_text("{")
    code, out, err = run_cli(*args, "--root", tmp_path)
    assert code == 1
    assert message in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err


def test_cli_missing_root(run_cli, tmp_path):
    code, _, err = run_cli("datasets", "list", "--root", tmp_path / "nowhere")
    assert code == 1 and "does not exist" in err


# -- secrets and the manifest's config ---------------------------------------------
def _field_names(schema: dict) -> set[str]:
    """Every property name anywhere in a JSON schema (nested models included)."""
    names: set[str] = set()
    for definition in [schema, *schema.get("$defs", {}).values()]:
        names.update(definition.get("properties", {}))
    return names


def test_every_run_config_field_survives_redaction():
    from factory.secrets import redact_secrets

    names = _field_names(RunConfig.model_json_schema())
    assert {"max_tokens", "min_tokens", "return_token_ids", "tokenizer", "api_key_env"} <= names
    redacted = redact_secrets({name: "value" for name in names})
    assert [name for name, value in redacted.items() if value != "value"] == []


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "OPENAI_API_KEY",
        "x-api-key",
        "apiKey",
        "private_key",
        "client_secret",
        "secret",
        "password",
        "db_passwd",
        "Authorization",
        "proxy-authorization",
        "token",
        "access_token",
        "hf_token",
        "Cookie",
    ],
)
def test_secrets_are_redacted(key):
    from factory.secrets import REDACTED, redact_secrets

    assert redact_secrets({"outer": [{key: "sk-live-123"}]}) == {"outer": [{key: REDACTED}]}


@pytest.mark.parametrize(
    "key",
    [
        "max_tokens",
        "min_tokens",
        "return_token_ids",
        "tokenizer",
        "pad_token",
        "eos_token",
        "api_key_env",
        "keep_order",
    ],
)
def test_settings_that_mention_tokens_or_keys_survive(key):
    from factory.secrets import redact_secrets

    assert redact_secrets({key: 7}) == {key: 7}


def test_manifest_config_keeps_settings_and_has_no_absolute_paths(tmp_path):
    from stillhouse.config import manifest_config

    text = GOOD + (
        "teacher:\n  backend: openai\n  model: m\n  tokenizer: tok\n  return_token_ids: true\n"
        "tasks:\n  - type: respond\n    max_tokens: 77\n"
        "curation:\n  - stage: heuristics\n    min_tokens: 2\n    max_tokens: 900\n"
    )
    config_path = write(tmp_path, text)
    config = load_run_config(config_path)
    assert config.seeds.path.is_absolute()  # resolved on load ...
    recorded = manifest_config(config, config_path)
    assert recorded["seeds"]["path"] == "seeds.jsonl"  # ... recorded relative to the config
    assert str(tmp_path) not in json.dumps(recorded)
    assert recorded["teacher"]["tokenizer"] == "tok" and recorded["teacher"]["return_token_ids"] is True
    assert recorded["tasks"][0]["max_tokens"] == 77
    assert recorded["curation"][0]["min_tokens"] == 2 and recorded["curation"][0]["max_tokens"] == 900
    # Everything else is the config's own JSON, unchanged.
    expected = config.model_dump(mode="json")
    expected["seeds"]["path"] = "seeds.jsonl"
    assert recorded == expected


# -- logging: -v/-q and runs/<name>/run.log ------------------------------------------
def test_run_log_records_steps_requests_and_errors_and_v_q_work_anywhere(tmp_path, run_cli, monkeypatch):
    from fixtures.fake_openai_server import FakeOpenAIServer
    from test_run import SEEDS, write_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", "sk-test")
    log = tmp_path / "runs" / "resume" / "run.log"
    with FakeOpenAIServer(fault_rate=1.0, faults=("500",)) as dead:
        code, _, err = run_cli("run", write_config(tmp_path, dead.url))
    assert code == 1
    assert "ERROR   stillhouse.runs: task-0-respond: failed: " in log.read_text()

    with FakeOpenAIServer(script=("500",)) as server:  # the first request fails once, then is retried
        config = write_config(tmp_path, server.url, curation=[{"stage": "exact_dedup"}])
        settings = yaml.safe_load(config.read_text())
        settings["teacher"]["max_retries"] = 2
        config.write_text(yaml.safe_dump(settings))
        code, out, err = run_cli("-q", "run", config)
        assert code == 0, err
        assert "publish:" not in out and "run resume: finished" in out  # only the result
        text = log.read_text()
        assert "INFO    stillhouse.runs: task-0-respond: started" in text
        assert f'task-0-respond: done {{"rows": {len(SEEDS)}, "teacher": {{"requests_sent": {len(SEEDS) + 1}' in text
        assert '"retries": 1' in text and "stillhouse.run: publish: resume@v1" in text
        assert "sk-test" not in text

        code, out, err = run_cli("run", config, "-v")  # -v after the command works too
        assert code == 0, err
        assert "INFO stillhouse.run: task-0-respond: done earlier" in err
        assert "task-0-respond: done earlier" in out


# -- shipped configs work verbatim ---------------------------------------------------
def test_shipped_train_configs_validate():
    from pathlib import Path

    from stillhouse.yaml_config import load_config
    from trainer.config import TrainConfig

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("train_*.yaml"))
    assert [path.name for path in configs] == ["train_tickets.yaml", "train_token_kd.yaml"]
    for path in configs:
        load_config(path, TrainConfig)


def test_readme_train_command_trains_on_the_quickstart_dataset(tmp_path, run_cli):
    from pathlib import Path

    labels = ["card_lost", "refund_request"]
    texts = [f"my card number {i} is lost" for i in range(12)] + [f"refund order {i} please" for i in range(12)]
    frame = pl.DataFrame(
        {
            "id": [f"t{i}" for i in range(24)],
            "instruction": ["Classify the intent of this customer support ticket."] * 24,
            "input": texts,
            "origin": ["seed"] * 24,
            "label": [labels[i // 12] for i in range(24)],
            "label_probs": [[0.9, 0.1] if i < 12 else [0.2, 0.8] for i in range(24)],
        },
        schema_overrides={"label_probs": pl.List(pl.Float32)},
    )
    DatasetStore(tmp_path / "datasets").publish("tickets", frame, label_set=labels)
    config = Path(__file__).resolve().parents[1] / "configs" / "train_tickets.yaml"
    code, out, err = run_cli("train", config, "--root", tmp_path / "datasets", "--output-dir", tmp_path / "student")
    assert code == 0, err
    assert "trained on tickets@v1" in out
    assert (tmp_path / "student").is_dir()


def test_help_texts_show_their_defaults(run_cli):
    code, out, _ = run_cli("datasets", "rows", "--help")
    assert code == 0
    assert "[default: $STILLHOUSE_DATASETS, else $STILLHOUSE_HOME/datasets_out, else ./datasets_out]." in " ".join(
        out.split()
    )
    code, out, _ = run_cli("review", "push", "--help")
    assert "[default: $ARGILLA_API_URL or" in out
    assert not re.search(r"\w \.(\s|$)", out)  # no help text lost its default to a bare " ."


def test_stillhouse_home_finds_the_store_from_any_directory(tmp_path, run_cli, monkeypatch):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    frame = pl.DataFrame({"id": ["a"], "instruction": ["x"], "input": [""], "origin": ["import"]})
    DatasetStore(home / "datasets_out").publish("notes", frame)
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("STILLHOUSE_DATASETS", raising=False)
    monkeypatch.setenv("STILLHOUSE_HOME", str(home))
    code, out, err = run_cli("datasets", "list")
    assert code == 0, err
    assert "notes" in out
    code, out, err = run_cli("datasets", "verify", "notes@latest")
    assert code == 0, err
