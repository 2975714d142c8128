from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from uploader.cli import app

runner = CliRunner()


def test_docs_writes_the_schemas_and_the_asyncapi_document(tmp_path: Path) -> None:
    result = runner.invoke(app, ["docs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "asyncapi.yaml").read_text().startswith("asyncapi: 3.0.0")
    assert len(list((tmp_path / "schemas").glob("*.json"))) >= 10


def test_creating_a_user_with_an_unknown_role_is_refused_clearly(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["users", "create", "x", "--role", "boss", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "role must be one of: uploader, data_manager, admin" in result.output


def test_a_user_and_a_token_are_created_and_the_password_shown_once(tmp_path: Path) -> None:
    created = runner.invoke(
        app,
        [
            "users",
            "create",
            "nurse",
            "--role",
            "uploader",
            "--lab-unit",
            "city-retina-clinic",
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert created.exit_code == 0, created.output
    assert "with password: " in created.output
    token = runner.invoke(app, ["tokens", "create", "nurse", "--data-dir", str(tmp_path)])
    assert token.exit_code == 0 and token.output.strip().startswith("iu_")


def test_tokens_are_listed_with_their_label_and_revoked_by_id(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    runner.invoke(app, ["users", "create", "tech", "--role", "uploader", *data])
    made = runner.invoke(
        app, ["tokens", "create", "tech", "--label", "scanner pc", "--expires-days", "30", *data]
    )
    assert made.exit_code == 0, made.output
    listed = runner.invoke(app, ["tokens", "list", "tech", *data])
    assert listed.exit_code == 0, listed.output
    assert "scanner pc" in listed.output and "never" in listed.output  # not used yet
    assert made.output.strip() not in listed.output  # the token itself is never shown again
    token_id = next(w for w in listed.output.split() if w.startswith("tok_"))
    revoked = runner.invoke(app, ["tokens", "revoke", token_id, *data])
    assert revoked.exit_code == 0 and f"revoked {token_id}" in revoked.output
    after = runner.invoke(app, ["tokens", "list", "tech", *data])
    assert "tech has no API tokens" in after.output
    again = runner.invoke(app, ["tokens", "revoke", token_id, *data])
    assert again.exit_code == 1
