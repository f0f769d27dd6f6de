"""python -m slmops.evaluation: the evaluation service."""

from slmops.core.service_main import main
from slmops.evaluation.service import registration

if __name__ == "__main__":
    main("evaluation", registration)
