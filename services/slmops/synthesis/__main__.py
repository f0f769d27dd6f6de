"""python -m slmops.synthesis: the synthesis service."""

from slmops.synthesis.service import registration
from slmops.core.service_main import main

if __name__ == "__main__":
    main("synthesis", registration)
