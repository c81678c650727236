"""``lora-wise configs``: every benchmark config with its sizes, backbone and rank."""

from __future__ import annotations

from .. import jsonio
from .parser import add_command


def register(commands) -> None:
    p = add_command(commands, "configs", "list every benchmark config with its sizes, backbone and rank")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_configs)


def _cmd_configs(args) -> int:
    from ..configs import iter_configs

    configs = [c.summary() for c in iter_configs()]
    if args.json:
        print(jsonio.dumps(configs, indent=2))
        return 0
    header = f"{'config':<16}{'alias':<13}{'range':<8}{'sizes':<24}{'backbone':<10}{'rank':>5}{'models':>8}  source"
    print(header)
    print("-" * len(header))
    for c in configs:
        sizes = ",".join(map(str, c["sizes"]))
        print(f"{c['name']:<16}{','.join(c['aliases']) or '-':<13}{c['range']:<8}{sizes:<24}"
              f"{c['backbone']:<10}{c['rank']:>5}{c['models']:>8}  {c['source']}")
    return 0
