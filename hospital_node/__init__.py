"""The hospital's node: answers a coordinator's requests from the site's own rows, under its policy."""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no Flower process of ours reports usage to flower.ai
