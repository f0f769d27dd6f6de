"""python -m slmops.training: the training service."""

from slmops.training.service import registration
from slmops.core.service_main import main

if __name__ == "__main__":
    main("training", registration)
