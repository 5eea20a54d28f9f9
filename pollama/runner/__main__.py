"""``python -m pollama.runner``: the model runner subprocess (see ``pollama.runner.process``)."""

import sys

from pollama.runner.process import main

sys.exit(main())
