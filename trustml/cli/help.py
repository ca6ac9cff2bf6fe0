"""``trustml --help``: every config group with its plugins/options and a one-line description each.

Plugins are listed from their modules' sources (:func:`trustml.registry.plugin_index`), without importing them:
the help needs neither torch nor Lightning. ``trustml --help GROUP=NAME`` imports that one plugin's module.
"""

from __future__ import annotations

from importlib.resources import files

from trustml.registry import PLUGIN_GROUPS, plugin_index

YAML_GROUPS = ("trainer", "logger", "callbacks", "paths", "experiment", "hparams_search", "debug")

USAGE = """trustml - trustworthy-ML experiments as Hydra-composed Lightning plugins

Usage:
  trustml [group=option ...] [key=value ...]       one run (e.g. trustml method=erm data=digits)
  trustml -m [group=a,b ...] [key=v1,v2 ...]       a sweep (e.g. trustml -m seed=1,2,3)
  trustml experiment=NAME                          a predefined experiment
  trustml --help GROUP=NAME                        one plugin's options, types and defaults (e.g. method=pc)
  trustml --cfg job                                print the composed config and exit
  trustml-report DIR                               Markdown + PNG report of a run or sweep directory

Runs are written to logs/runs/<time>/ (sweeps to logs/multiruns/<time>/<n>/): .hydra/ (config, overrides),
run.json (seed, git commit, versions, status), metrics.csv, results.json and checkpoints/.
Hydra's own flags (--multirun, --cfg, --info, --config-dir, ...) work as usual: see `trustml --hydra-help`.
A run directory in use by another run (its run.lock names a live pid) is refused.

Exit codes: 0 completed; 2 bad input (config, data, checkpoint: one message naming the option and the fix);
1 any other failure (e.g. disk full, out of memory); 130 / 143 interrupted by SIGINT / SIGTERM. A run that
does not complete is recorded in run.json as failed or interrupted, with the reason, and has no results.json.
"""


def _first_comment(text: str) -> str:
    """The first block of ``#`` comment lines (the ``@package`` line skipped), joined into one line."""
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and "@package" not in stripped:
            block.append(stripped.lstrip("# ").strip())
        elif block:
            break
    return " ".join(block)


def yaml_options(group: str) -> dict[str, str]:
    """Options of a YAML config group with the first comment line of each file."""
    folder = files("trustml.conf") / group
    if not folder.is_dir():
        return {}
    return {
        entry.name[: -len(".yaml")]: _first_comment(entry.read_text())
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".yaml")
    }


def help_text() -> str:
    """The full help: usage, then each group with its options."""
    lines = [USAGE, "Config groups (select with group=option):"]
    index = plugin_index()
    for group in (*PLUGIN_GROUPS, *YAML_GROUPS):
        options = {name: entry.summary for name, entry in sorted(index.get(group, {}).items())}
        options.update(yaml_options(group))
        lines.append(f"\n  {group}:")
        if not options:
            lines.append("    (none installed)")
        width = max((len(n) for n in options), default=0)
        lines += [f"    {name:<{width}}  {summary}".rstrip() for name, summary in options.items()]
    return "\n".join(lines) + "\n"


def print_help(topics: list[str] | None = None) -> int:
    """Print :func:`help_text`, or for each ``GROUP=NAME`` in ``topics`` that plugin's options
    (:func:`~trustml.cli.plugin_help.plugin_help`); return the exit code (2 for an unknown topic)."""
    if not topics:
        print(help_text(), end="")
        return 0
    from trustml.cli.plugin_help import plugin_help

    code = 0
    for topic in topics:
        group, _, name = topic.partition("=")
        if group not in (*PLUGIN_GROUPS, *YAML_GROUPS) or not name:
            groups = ", ".join((*PLUGIN_GROUPS, *YAML_GROUPS))
            print(f"trustml --help takes GROUP=NAME (e.g. --help method=pc); groups: {groups}")
            code = 2
            continue
        text = plugin_help(group, name)
        code = 2 if text.startswith("unknown plugin") else code
        print(text)
    return code
