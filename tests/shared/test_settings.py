from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import Settings


def test_environment_prefix_and_sqlite_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELSERVE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MODELSERVE_MAX_BATCH_SIZE", "17")
    settings = Settings()
    assert settings.max_batch_size == 17
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'modelserve.db'}"


def test_every_field_is_documented() -> None:
    source = Path(Settings.__module__.replace(".", "/") + ".py").read_text()
    for name in Settings.model_fields:
        after = source.split(f"    {name}:", 1)[1].splitlines()[1].strip()
        assert after.startswith('"""'), f"setting {name} has no docstring"


def test_production_refuses_weak_admin_key() -> None:
    with pytest.raises(ValidationError, match="ADMIN_KEY"):
        Settings(environment="production", admin_key="short")


def test_admin_key_is_not_in_repr() -> None:
    assert "hunter2hunter2" not in repr(Settings(admin_key="hunter2hunter2"))
