"""Put ``tests/hw`` on ``sys.path`` so that cocotb test modules import by name."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
