"""Planted secrets never leave the process: not in files ftcore writes, not in what it prints, not over the network.

Fake secrets are planted as environment variables named like real credentials and read by a recipe through
``${oc.env:NAME}``; every file under the run folder and the data cache (binary files too) and the captured
output must not contain their values. A local HTTP server checks that a URL built from one is never requested.
"""

import http.server
import threading
from pathlib import Path

import pytest

from ftcore import secrets
from ftcore.cli import main
from ftcore.testing import alpaca_rows, write_jsonl

HF = "hf_fakeTOKENvalue1234567890abcd"
AWS = "FAKEawsSECRETkey0987654321zyxw"
RUN_NAME = "RUNnameFROMenv5555aaaabbbb"


@pytest.fixture
def planted(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS)
    monkeypatch.setenv("MY_RUN_NAME_SECRET", RUN_NAME)
    yield (HF, AWS, RUN_NAME)
    secrets._clear() if hasattr(secrets, "_clear") else None


def _leaks(folder: Path, values) -> list[str]:
    found = []
    for f in folder.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            found += [f"{f}: {v}" for v in values if v.encode() in data]
    return found


def _recipe(tmp_path, tiny_llama, extra=""):
    data = write_jsonl(tmp_path / "train.jsonl", alpaca_rows(8))
    path = tmp_path / "secret.yaml"
    path.write_text(
        f"base_model: {tiny_llama}\n"
        f"datasets:\n  - path: {data}\n    type: alpaca\n"
        "default_system_message: ${oc.env:MY_RUN_NAME_SECRET}\n"
        f"output_dir: {tmp_path / 'out'}\n"
        f"dataset_prepared_path: {tmp_path / 'cache'}\n"
        "sequence_len: 256\nmicro_batch_size: 2\nmax_steps: 2\nsave_steps: 1\nlogging_steps: 1\n" + extra,
        encoding="utf-8")
    return path


def test_validate_and_a_bad_recipe_never_echo_a_secret(tmp_path, tiny_llama, planted, capsys):
    recipe = _recipe(tmp_path, tiny_llama)
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr()
    assert not [v for v in planted if v in out.out + out.err]
    bad = _recipe(tmp_path, tiny_llama, extra="learning_rate: ${oc.env:AWS_SECRET_ACCESS_KEY}\n")
    assert main(["validate", str(bad)]) == 2
    out = capsys.readouterr()
    assert "learning_rate" in out.err
    assert AWS not in out.out + out.err


def test_recipe_yaml_keeps_the_reference_not_the_value(tmp_path, tiny_llama, planted):
    from ftcore.testing import load_recipe

    recipe = load_recipe(_recipe(tmp_path, tiny_llama))
    written = recipe.to_yaml_dict()
    assert written["default_system_message"] == "${oc.env:MY_RUN_NAME_SECRET}"
    assert RUN_NAME not in repr(written)


def test_preprocess_writes_no_secret_to_the_cache(tmp_path, tiny_llama, planted, capsys):
    recipe = _recipe(tmp_path, tiny_llama)
    assert main(["preprocess", str(recipe)]) == 0
    out = capsys.readouterr()
    assert (tmp_path / "cache").exists()
    assert _leaks(tmp_path / "cache", planted) == []
    assert not [v for v in planted if v in out.out + out.err]


@pytest.mark.slow
def test_a_tiny_run_writes_no_secret_anywhere(tmp_path, tiny_llama, planted, capsys):
    recipe = _recipe(tmp_path, tiny_llama)
    assert main(["run", str(recipe)]) == 0
    out = capsys.readouterr()
    assert (tmp_path / "out" / "recipe.yaml").exists()
    assert _leaks(tmp_path / "out", planted) == []
    assert _leaks(tmp_path / "cache", planted) == []
    assert not [v for v in planted if v in out.out + out.err]


@pytest.fixture
def server():
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            requests.append(self.path)
            self.send_response(404)
            self.end_headers()

        def do_HEAD(self):  # noqa: N802
            self.do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], requests
    httpd.shutdown()


@pytest.mark.parametrize("command", ["validate", "preprocess"])
def test_an_environment_value_never_reaches_a_url(tmp_path, tiny_llama, planted, server, capsys, command):
    port, requests = server
    path = tmp_path / "url.yaml"
    path.write_text(
        f"base_model: {tiny_llama}\n"
        "datasets:\n  - path: json\n"
        f"    data_files: \"http://127.0.0.1:{port}/${{oc.env:AWS_SECRET_ACCESS_KEY}}.jsonl\"\n"
        "    type: alpaca\n"
        f"output_dir: {tmp_path / 'out'}\ndataset_prepared_path: {tmp_path / 'cache'}\n", encoding="utf-8")
    assert main([command, str(path)]) == 2
    out = capsys.readouterr()
    assert "environment values are never sent over the network" in out.err
    assert "data_files" in out.err
    assert AWS not in out.out + out.err
    assert requests == []
    assert not (tmp_path / "cache").exists()


def test_a_local_path_from_the_environment_is_allowed(tmp_path, tiny_llama, monkeypatch, capsys):
    write_jsonl(tmp_path / "train.jsonl", alpaca_rows(4))
    monkeypatch.setenv("MY_DATA_HOME", str(tmp_path))
    path = tmp_path / "local.yaml"
    path.write_text(f"base_model: {tiny_llama}\n"
                    "datasets:\n  - path: ${oc.env:MY_DATA_HOME}/train.jsonl\n    type: alpaca\n", encoding="utf-8")
    assert main(["validate", str(path)]) == 0
