"""python -m slmops.conversion: the conversion service."""

from slmops.conversion.service import registration
from slmops.core.service_main import main

if __name__ == "__main__":
    main("conversion", registration)
