"""``edged config check|show``: validate settings and print the effective ones."""

from __future__ import annotations

import argparse
import json

from edged.cli.common import add_common, print_json, settings_from_args
from edged.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("config", help="check or show the configuration")
    actions = parser.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="validate; exit 2 listing every problem")
    add_common(check, one_shot=True)
    check.set_defaults(handler=_check)
    show = actions.add_parser("show", help="print the effective configuration")
    add_common(show, one_shot=True)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_show)
    schema = actions.add_parser("schema", help="print the JSON schema of the config file")
    schema.set_defaults(handler=_schema)


def _check(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    print("config ok")
    print(f"  state_dir   {settings.state_dir}")
    print(f"  cache_dir   {settings.cache_dir}")
    print(f"  runtime_dir {settings.runtime_dir}")
    print(f"  model_dirs  {', '.join(map(str, settings.model_search_path))}")
    print(f"  requests    {settings.requests_endpoint}")
    print(f"  results     {settings.results_endpoint}")
    print(f"  streams     {len(settings.streams)}: {', '.join(s.name for s in settings.streams)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    data = settings.model_dump(mode="json")
    if args.json:
        print_json(data)
    else:
        print(json.dumps(data, indent=2))
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(Settings.model_json_schema(), indent=2))
    return 0
