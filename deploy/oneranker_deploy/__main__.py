import sys

from .rollout import main

sys.exit(main())
