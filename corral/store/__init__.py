"""Storage: the only layer that touches disk."""

from corral.store.mvcc import Applied, MVCCStore, StoreTxn

__all__ = ["Applied", "MVCCStore", "StoreTxn"]
