"""``python -m zswapd``: the ``zswapd`` command, where its script is not on PATH."""

from zswapd.cli import main

raise SystemExit(main())
