"""``python -m meshbridge.service``: the ``meshbridge`` command."""

from ._cli import main

raise SystemExit(main())
