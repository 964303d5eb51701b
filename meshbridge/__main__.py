"""``python -m meshbridge``: runs the installed ``meshbridge`` command.

The command belongs to the service layer; the core finds it through its
console-script entry point rather than importing the service.
"""

from importlib.metadata import entry_points

(command,) = entry_points(group="console_scripts", name="meshbridge")
raise SystemExit(command.load()())
