"""SWIM + Lifeguard membership (placeholder; see core)."""
