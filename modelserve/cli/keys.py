"""`modelserve keys …`: create, list, show, revoke API keys (admin)."""

from __future__ import annotations

from typing import Annotated

import typer

from modelserve.cli.context import client
from modelserve.cli.output import JsonOpt, emit_json, err, fields, out, table

app = typer.Typer(help="API keys: create, list, show, revoke.", no_args_is_help=True)


@app.command("create")
def create(
    name: str,
    scope: Annotated[list[str], typer.Option("--scope", "-s", help="admin or predict (repeatable).")],
    service: Annotated[
        list[str] | None, typer.Option("--service", help="Limit a predict key to these services.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key; its secret is printed this once only."""
    with client() as ms:
        created = ms.create_key(name, scope, services=service or None)
    if as_json:
        emit_json(created)
        return
    fields(
        [
            ("id", created.id),
            ("name", created.name),
            ("scopes", ", ".join(created.scopes)),
            ("services", created.services),
        ]
    )
    err.print("The key (shown once, store it now):")
    out.print(created.key, highlight=False)


@app.command("list")
def list_keys(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    limit: int = 50,
    offset: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """List keys (never their secrets)."""
    with client() as ms:
        page = ms.list_keys(include_revoked=all_keys, limit=limit, offset=offset)
    if as_json:
        emit_json(page)
        return
    table(
        page.items,
        [
            ("id", lambda k: k.id),
            ("name", lambda k: k.name),
            ("scopes", lambda k: ", ".join(k.scopes)),
            ("services", lambda k: k.services),
            ("created", lambda k: k.created_at),
            ("revoked", lambda k: k.revoked_at),
        ],
        title=f"{page.total} key(s)",
    )


@app.command("show")
def show(key_id: str, as_json: JsonOpt = False) -> None:
    """Show one key."""
    with client() as ms:
        key = ms.get_key(key_id)
    if as_json:
        emit_json(key)
    else:
        fields(
            [
                ("id", key.id),
                ("name", key.name),
                ("scopes", ", ".join(key.scopes)),
                ("services", key.services),
                ("created", key.created_at),
                ("revoked", key.revoked_at),
            ]
        )


@app.command("revoke")
def revoke(key_id: str, as_json: JsonOpt = False) -> None:
    """Revoke a key (gateways forget it within seconds)."""
    with client() as ms:
        ms.revoke_key(key_id)
    if as_json:
        emit_json({"revoked": key_id})
    else:
        out.print(f"revoked {key_id}")
