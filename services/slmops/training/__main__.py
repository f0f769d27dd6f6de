"""python -m slmops.training: the training service."""

from slmops.core.service_main import main
from slmops.training.service import registration

if __name__ == "__main__":
    main("training", registration)
