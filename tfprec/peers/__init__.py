"""Peer allocation methods tfprec is compared against (benchmarks)."""
