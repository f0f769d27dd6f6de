"""python -m slmops.synthesis: the synthesis service."""

from slmops.core.service_main import main
from slmops.synthesis.service import registration

if __name__ == "__main__":
    main("synthesis", registration)
