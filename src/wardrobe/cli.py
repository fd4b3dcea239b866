"""Console commands: `wardrobe-migrate` and `wardrobe-token`."""

from __future__ import annotations

import argparse
import sys
import urllib.parse

from wardrobe.config import Config, ConfigError
from wardrobe.web.auth import sign_init_data


def _config() -> Config:
    try:
        return Config.from_env()
    except ConfigError as exc:
        sys.exit(f"wardrobe: {exc}")


def migrate(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description="Apply pending database migrations.").parse_args(argv)
    from wardrobe.migrate import apply

    applied = apply(_config().database_url)
    print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")


def token(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print an Authorization header value for a local user.")
    parser.add_argument("--user-id", type=int, default=123)
    parser.add_argument("--first-name", default="Dev")
    parser.add_argument(
        "--link",
        action="store_true",
        help="print a link that opens the Mini App signed in as this user (on WARDROBE_BIND) instead",
    )
    args = parser.parse_args(argv)
    config = _config()
    init_data = sign_init_data(config.telegram_bot_token, {"id": args.user_id, "first_name": args.first_name})
    print(mini_app_link(f"http://{config.bind}", init_data) if args.link else f"tma {init_data}")


def mini_app_link(base_url: str, init_data: str) -> str:
    """The Mini App's URL with the init data in the fragment, where Telegram puts it when it opens a Mini App."""
    return f"{base_url.rstrip('/')}/app/#tgWebAppData={urllib.parse.quote(init_data, safe='')}"
