"""``python -m meshsdk.demo [--quick] [--no-color]``."""

import sys

from meshsdk.demo.scenes import main

sys.exit(main())
