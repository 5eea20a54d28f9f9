"""``python -m pollama`` runs the CLI."""

from pollama.cli.main import main

raise SystemExit(main())
