"""python -m slmops.evaluation: the evaluation service."""

from slmops.evaluation.service import registration
from slmops.core.service_main import main

if __name__ == "__main__":
    main("evaluation", registration)
