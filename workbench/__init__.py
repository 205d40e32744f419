"""The researcher's and coordinator's side: protocols, studies over Flower, results, dashboard support."""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no Flower process of ours reports usage to flower.ai
