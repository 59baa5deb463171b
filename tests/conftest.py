from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # test helper modules for spawned workers
