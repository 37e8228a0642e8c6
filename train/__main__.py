"""`python -m flax_effnet.train`: the same as the `train_efficientnet` command."""

import sys

from flax_effnet.train.main import main

sys.exit(main())
