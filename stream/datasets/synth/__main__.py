"""``python -m stream.datasets.synth``: write a synthetic stream and its ground truth."""

import sys

from stream.datasets.synth.generator import main

sys.exit(main())
