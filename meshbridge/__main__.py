"""``python -m meshbridge``: the ``meshbridge`` command."""

from ._cli import main

raise SystemExit(main())
